"""The scoring loop of ``classify`` and what it reports: progress, the first Ctrl-C, the tally,
the summary line and the results page."""
import logging
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from ..dicomweb import is_dicomweb
from ..result import Status
from .side_outputs import write_side_outputs

log = logging.getLogger("xray_infer.cli")


class Progress:
    """A line on stderr, redrawn; ``total`` None: not known (a streamed listing)."""

    def __init__(self, total, enabled):
        self.total, self.enabled = total, enabled
        self.done = self.failed = 0
        self.t0 = self.last = time.perf_counter()

    def of(self):
        """How far the run got, in words."""
        return f"{self.done}" if self.total is None else f"{self.done} of {self.total}"

    def update(self, ok):
        self.done += 1
        self.failed += not ok
        now = time.perf_counter()
        if self.enabled and (now - self.last > 0.2 or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            if self.total is None:
                where = f"{self.done} (listing as it goes)"
                eta = ""
            else:
                where = f"{self.done}/{self.total} ({100 * self.done / self.total:.0f}%)"
                eta = f", ETA {(self.total - self.done) / rate if rate > 0 else 0:.0f}s"
            sys.stderr.write(f"\r{where} {rate:.0f} img/s, {self.failed} failed{eta}  ")
            sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")


@dataclass
class Tally:
    """What the scoring loop saw."""
    classified: int = 0
    out_of_scope: int = 0
    failures: list = field(default_factory=list)


def summary_line(tally, plan, *, inputs, run, overlays=None, dicom_out=None, warnings=0,
                 variant=None):
    """The run's one-line summary (stderr); ``variant`` names what scored (model version and
    precision)."""
    msg = (f"xray-infer: {tally.classified} classified, {tally.out_of_scope} out of scope, "
           f"{len(tally.failures)} failed")
    if variant:
        msg += f" ({variant})"
    if run.options.scope in (False, "off"):
        msg += " (scope gate off)"
    if plan.skipped:
        msg += f", {plan.skipped} skipped (already in {run.output}"
        msg += (f"; {plan.skipped_failed} of them with an error (--retry-failed scores them "
                f"again))" if plan.skipped_failed else ")")
    if plan.retried:
        msg += f", {len(plan.retried)} failed earlier and retried"
    if inputs.repeats:
        msg += f", {inputs.repeats} repeated input(s) scored once"
    if inputs.subfolders:
        msg += (f"; {inputs.subfolders} sub-folder{'' if inputs.subfolders == 1 else 's'} "
                f"not searched (-r descends into them)")
    if inputs.skipped:
        reasons = Counter(why.split(":")[0].split(" (")[0] for _, why in inputs.skipped)
        found_in = "DICOMweb instance(s)" if all(is_dicomweb(p) for p, _ in inputs.skipped) \
            else "file(s) in folders"
        msg += (f"; {len(inputs.skipped)} {found_in} skipped (" +
                ", ".join(f"{n} {why}" for why, n in reasons.most_common()) +
                ("; --log lists them)" if not run.log else f"; listed in {run.log})"))
    if overlays:
        msg += f"; {overlays.written} heatmap(s) in {run.heatmaps}"
        if overlays.failed:
            msg += f", {overlays.failed} not written{_see(run)}"
    if dicom_out:
        where = "stored at" if dicom_out.client is not None else "in"
        msg += f"; DICOM SR + SC for {dicom_out.written} input(s) {where} {run.dicom_out}"
        if dicom_out.not_dicom:
            msg += f", none for {dicom_out.not_dicom} non-DICOM input(s)"
        if dicom_out.failed:
            msg += f", {dicom_out.failed} not written{_see(run)}"
    if warnings:
        msg += (f"; {warnings} library warning(s) " +
                (f"in {run.log}" if run.log else "(--log FILE keeps them)"))
    return msg


def _see(run):
    return f" (reasons in {run.log})" if run.log else " (reasons below)"


class CtrlC:
    """SIGINT while scoring: the first one stops the run between two rows (raised in the middle
    of a write or inside a library's lock, KeyboardInterrupt could leave a row cut or a lock
    held that the workers' shutdown then waits on), and calls ``on_press`` (which cuts what
    may block a worker: a network read); a second one interrupts at once."""

    def __init__(self, on_press=None):
        self.pressed, self.on_press = False, on_press

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._press)
        return self

    def _press(self, signum, frame):
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True
        if self.on_press is not None:
            threading.Thread(target=self.on_press, daemon=True).start()  # not in the handler

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)

    def check(self):
        if self.pressed:
            raise KeyboardInterrupt


def score(engine, files, writer, progress, side_outputs, page=None, ctrl_c=None):
    """Write a row per input (and to the results ``page``) and return the Tally;
    KeyboardInterrupt (``ctrl_c``: between rows) and a failed Ray job pass through (the rows
    written until then are complete, and the page holds each of them)."""
    tally = Tally()
    max_value, remote = engine.options.max_value, engine.run.remote
    for r in engine.results(files):
        if ctrl_c is not None:
            ctrl_c.check()
        writer.write(r)
        scan = None
        try:
            progress.update(r.status is not Status.FAILED)
            if r.status is Status.FAILED:
                tally.failures.append(r)
                log.info("%s: %s", r.source, r.error)
            elif r.status is Status.OUT_OF_SCOPE:
                tally.out_of_scope += 1
                log.info("%s: %s", r.source, r.refusal)
            else:
                tally.classified += 1
                if side_outputs:
                    scan = write_side_outputs(side_outputs, r, max_value, remote)
        finally:
            if page is not None:
                page.add(r, scan)  # the scan decoded for the side outputs, not decoded again
            if remote is not None:
                remote.forget(r.source)
    return tally


class Page:
    """The results page, if asked for: it holds a row for every row written, and says when the
    run was interrupted."""

    def __init__(self, run, engine, overlays):
        self.page = None
        if run.report:
            from .results_page import ResultsPage
            self.page = ResultsPage(run.report, engine.spec, engine.variant, overlays)

    def close(self, writer, interrupted=None):
        if self.page is None:
            return
        if len(self.page.rows) < writer.written:  # interrupted between the two
            self.page.add(writer.last, picture=False)
        self.page.close(interrupted)
