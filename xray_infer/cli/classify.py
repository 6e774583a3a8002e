"""``xray-infer classify``: score files, folders and URIs; one row per input, in input order."""
import logging
import os
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial

from ..errors import UsageError, XrayInferError
from ..inputs import IMAGE_EXTENSIONS, collect_inputs, input_key, is_uri
from ..output import (FORMATS, TEXT_ERRORS, Existing, ResultWriter, format_for, header,
                      open_output, output_exists)
from ..bitdepth import check_max_value
from ..scope import Scope, parse_ages, require_gate
from ..spec import CPU_BATCH_SIZE, DECODE_MODES, DEFAULT_BATCH_SIZE, PRECISIONS
from ._common import (EXIT_INPUT_FAILED, EXIT_INTERRUPTED, EXIT_JOB_FAILED, EXIT_OK,
                      EXIT_PIPE_CLOSED, EXIT_USAGE, check_scope_options, check_writable_file,
                      check_writable_folder, checked, fail, positive, quiet_opencv, require,
                      setup_logging)
from . import dicomweb_options
from .extras import DicomResults, Overlays, write_extras

log = logging.getLogger("xray_infer.cli")
ages = checked(parse_ages)
max_value = checked(check_max_value)


class Progress:
    def __init__(self, total, enabled):
        self.total, self.enabled = total, enabled
        self.done = self.failed = 0
        self.t0 = self.last = time.perf_counter()

    def update(self, ok):
        self.done += 1
        self.failed += not ok
        now = time.perf_counter()
        if self.enabled and (now - self.last > 0.2 or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else 0
            sys.stderr.write(f"\r{self.done}/{self.total} ({100 * self.done / self.total:.0f}%) "
                             f"{rate:.0f} img/s, {self.failed} failed, ETA {eta:.0f}s  ")
            sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")


def check_arguments(args):
    """Every option value and combination, before anything is loaded or written.

    Returns (format, the earlier output or None)."""
    positive("--batch-size", args.batch_size)
    positive("--threads", args.threads)
    positive("--workers", args.workers)
    check_scope_options(args)
    args.remote = dicomweb_options.check_run(args)
    if args.engine != "ray":
        for option, value in (("--address", args.address),
                              ("--gpus-per-worker", args.gpus_per_worker),
                              ("--cpus-per-worker", args.cpus_per_worker)):
            if value is not None:
                raise UsageError(f"{option} needs --engine ray")
    else:
        if args.threads is not None:
            raise UsageError("--threads: with --engine ray, --cpus-per-worker sets each "
                             "worker's threads")
        if args.heatmaps or args.dicom_out:
            raise UsageError("--heatmaps and --dicom-out need the scans' pixels on this machine: "
                             "use the local engine")
        if args.gpus_per_worker is not None and args.gpus_per_worker < 0:
            raise UsageError(f"--gpus-per-worker must be at least 0, got {args.gpus_per_worker}")
        if args.cpus_per_worker is not None and args.cpus_per_worker <= 0:
            raise UsageError(f"--cpus-per-worker must be above 0, got {args.cpus_per_worker}")
        require(["ray"], "--engine ray", "xray-infer[ray]")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other; choose one")
    if args.retry_failed and not args.resume:
        raise UsageError("--retry-failed needs --resume")
    if args.resume and not args.output:
        raise UsageError("--resume needs --output")
    if args.model and not os.path.isfile(args.model):
        raise UsageError(f"--model {args.model}: no such file")
    # every path the run writes, before the model loads
    for option, path in (("--report", args.report), ("--log", args.log)):
        if path is not None:
            check_writable_file(option, path)
    if args.output and not is_uri(args.output):
        check_writable_file("--output", args.output)
    for option, folder in (("--heatmaps", args.heatmaps), ("--dicom-out", args.dicom_out)):
        if folder is not None and not (option == "--dicom-out" and args.remote
                                       and dicomweb_options.is_dicomweb(folder)):
            check_writable_folder(option, folder)
    if args.dicom_out:
        require(["pydicom", "highdicom"], "--dicom-out", "xray-infer[dicom]")
    fmt = args.format or (format_for(args.output) if args.output else "csv")
    remote = bool(args.output) and is_uri(args.output)
    if fmt == "parquet" or remote:
        require(["pyarrow"], "Parquet output and URI outputs", "pyarrow")
    if fmt == "parquet" and not args.output:
        raise UsageError("Parquet output needs --output FILE")
    if args.resume and remote:
        raise UsageError("--resume works on a local output file; an object in a store is "
                         "written whole (--overwrite replaces it)")
    existing = None
    if args.output:
        if not remote and os.path.isdir(args.output):
            raise UsageError(f"--output {args.output}: is a directory")
        if output_exists(args.output):
            if not (args.resume or args.overwrite):
                raise UsageError(f"{args.output} exists; use --resume to skip inputs already in "
                                 f"it, or --overwrite")
            if args.resume:
                existing = Existing(args.output)
    if existing is not None and existing.fmt:
        if args.format and args.format != existing.fmt:
            raise UsageError(f"--format {args.format}, but {args.output} holds {existing.fmt} "
                             f"rows; resuming must keep the file's format")
        fmt = existing.fmt
    return fmt, existing


class RayLines:
    """Where Ray's terminal output goes while the Ray engine runs: each line to the log
    (``--log``), none to the terminal, where the rows and the progress are; a failed job is
    reported once, in one line."""

    #: Ray's core (C++) log lines: ``[2026-12-02 00:23:29,708 E 29920 29920] file.cc:1: ...``
    CORE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,.]+ [DIWEF] \d+ \d+\]")

    def __init__(self, forward=None):
        from ..distributed import COLOUR  # the Ray engine only: Ray is installed
        self.pending, self.forward, self.colour = "", forward, COLOUR

    def write(self, text):
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            clean = self.colour.sub("", line).rstrip()
            if self.forward is not None and not self.CORE.match(clean):
                self.forward.write(line + "\n")  # not Ray's: through to the terminal
                self.forward.flush()
            elif clean:
                log.info("ray: %s", clean)
        return len(text)

    def flush(self):
        pass


def quiet_ray():
    """Ray's terminal output off for the Ray engine. Ray Data's notices and errors are
    silenced (the job's failure is reported in one line); the error messages Ray's driver
    prints to ``sys.stdout`` (where rows may go) and the lines its core writes to file
    descriptor 2 go to the log instead (RayLines). Python's own ``sys.stderr`` keeps the
    terminal, and anything else written to descriptor 2 still reaches it."""
    import threading
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    # Ray's own Python log lines (its notices about starting a local cluster among them) go
    # where ours do, to --log, not to the terminal its handler writes to
    ray_log = logging.getLogger("ray")
    for handler in list(ray_log.handlers):
        ray_log.removeHandler(handler)
    ray_log.propagate = True
    sys.stdout = RayLines()
    try:
        terminal = os.dup(2)
    except OSError:  # no descriptor 2 to take over
        return
    sys.stderr.flush()
    sys.stderr = open(terminal, "w", buffering=1, encoding=sys.stderr.encoding,
                      errors=sys.stderr.errors)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    lines = RayLines(forward=sys.stderr)

    def pump():
        with open(read, "r", encoding="utf-8", errors="replace") as f:
            for line in f:
                lines.write(line)
    threading.Thread(target=pump, name="xray-ray-stderr", daemon=True).start()


class Engine:
    """Where the scoring runs: a Classifier in this process, or Ray workers (``--engine ray``:
    connected here, so that an unreachable cluster is reported before any output is touched).
    Both yield one Result per input, in input order."""

    def __init__(self, args, providers):
        self.args, self.providers = args, providers
        if args.engine == "ray":
            from .. import distributed
            from ..model import DEFAULT_MODEL, Variant, load_model
            self.clf = None
            self.spec = load_model(args.model, providers=["CPUExecutionProvider"])[1]
            self.variant = Variant(args.model or DEFAULT_MODEL, args.precision,
                                   "chosen by each Ray worker")
            require_gate(self.spec, Scope.of(args.scope, args.ages), args.model or DEFAULT_MODEL)
            quiet_ray()
            distributed.connect(args.address)
            distributed.plan(args.workers, args.gpus_per_worker or 0.0, args.cpus_per_worker)
        else:
            from ..classifier import Classifier
            self.clf = Classifier(args.model, providers=providers, batch_size=args.batch_size,
                                  threads=args.threads, workers=args.workers,
                                  heatmaps=bool(args.heatmaps or args.dicom_out),
                                  scope=args.scope, ages=args.ages, precision=args.precision,
                                  decode=args.decode, max_value=args.max_value)
            self.spec, self.variant = self.clf.spec, self.clf.variant

    def results(self, files):
        if self.clf is not None:
            if self.args.remote is not None:  # DICOMweb instances: each read in its turn
                from ..batch import Fetched
                files = [Fetched(f, partial(self.args.remote.fetch, f))
                         if dicomweb_options.is_dicomweb(f) else f for f in files]
            return self.clf.iter_classify(files)
        from .. import distributed
        a = self.args
        return distributed.iter_results(
            files, address=a.address, model=a.model, workers=a.workers,
            gpus_per_worker=a.gpus_per_worker or 0.0, cpus_per_worker=a.cpus_per_worker,
            batch_size=a.batch_size, providers=self.providers, scope=a.scope, ages=a.ages,
            precision=a.precision, decode=a.decode, max_value=a.max_value)


@dataclass
class ResumePlan:
    """What a run scores given the earlier output: ``files`` left to score, how many were
    ``skipped`` (of them ``skipped_failed`` with an error row), and the keys of the failed rows
    ``retried``."""
    files: list
    skipped: int = 0
    skipped_failed: int = 0
    retried: set = field(default_factory=set)


def resume_plan(files, existing, retry_failed):
    if existing is None:
        return ResumePlan(files)
    keys = [input_key(f) for f in files]
    retried = {k for k in keys if existing.rows.get(k)} if retry_failed else set()
    done = {k for k in existing.rows if k not in retried}
    return ResumePlan([f for f, k in zip(files, keys) if k not in done],
                      skipped=sum(k in done for k in keys),
                      skipped_failed=sum(k in done and existing.rows[k] for k in keys),
                      retried=retried)


@dataclass
class Tally:
    """What the scoring loop saw."""
    classified: int = 0
    out_of_scope: int = 0
    failures: list = field(default_factory=list)


def summary_line(tally, plan, *, inputs, args, overlays=None, dicom_out=None, warnings=0):
    """The run's one-line summary (stderr)."""
    msg = (f"xray-infer: {tally.classified} classified, {tally.out_of_scope} out of scope, "
           f"{len(tally.failures)} failed")
    if args.scope == "off":
        msg += " (scope gate off)"
    if plan.skipped:
        msg += f", {plan.skipped} skipped (already in {args.output}"
        msg += (f"; {plan.skipped_failed} of them with an error (--retry-failed scores them "
                f"again))" if plan.skipped_failed else ")")
    if plan.retried:
        msg += f", {len(plan.retried)} failed earlier and retried"
    if inputs.repeats:
        msg += f", {inputs.repeats} repeated input(s) scored once"
    if inputs.skipped:
        reasons = Counter(why.split(":")[0].split(" (")[0] for _, why in inputs.skipped)
        found_in = "DICOMweb instance(s)" if args.remote and not any(
            os.path.exists(p) for p in args.paths) else "file(s) in folders"
        msg += (f"; {len(inputs.skipped)} {found_in} skipped (" +
                ", ".join(f"{n} {why}" for why, n in reasons.most_common()) +
                ("; --log lists them)" if not args.log else f"; listed in {args.log})"))
    if overlays:
        msg += f"; {overlays.written} heatmap(s) in {args.heatmaps}"
        if overlays.failed:
            msg += f", {overlays.failed} not written (see --log)"
    if dicom_out:
        where = "stored at" if dicom_out.client is not None else "in"
        msg += f"; DICOM SR + SC for {dicom_out.written} input(s) {where} {args.dicom_out}"
        if dicom_out.not_dicom:
            msg += f", none for {dicom_out.not_dicom} non-DICOM input(s)"
        if dicom_out.failed:
            msg += f", {dicom_out.failed} not written (see --log)"
    if warnings:
        msg += (f"; {warnings} library warning(s) " +
                (f"in {args.log}" if args.log else "(--log FILE keeps them)"))
    return msg


class CtrlC:
    """SIGINT while scoring: the first one stops the run between two rows (raised in the middle
    of a write or inside a library's lock, KeyboardInterrupt could leave a row cut or a lock
    held that the workers' shutdown then waits on); a second one interrupts at once."""

    def __init__(self):
        self.pressed = False

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._press)
        return self

    def _press(self, signum, frame):
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)

    def check(self):
        if self.pressed:
            raise KeyboardInterrupt


def score(engine, files, writer, progress, extras, page=None, ctrl_c=None):
    """Write a row per input (and to the results ``page``) and return the Tally;
    KeyboardInterrupt (``ctrl_c``: between rows) and a failed Ray job pass through (the rows
    written until then are complete, and the page holds each of them)."""
    tally = Tally()
    max_value = engine.args.max_value
    for r in engine.results(files):
        if ctrl_c is not None:
            ctrl_c.check()
        writer.write(r)
        scan = None
        try:
            progress.update(r.status != "failed")
            if r.status == "failed":
                tally.failures.append(r)
                log.info("%s: %s", r.source, r.error)
            elif r.status == "out_of_scope":
                tally.out_of_scope += 1
                log.info("%s: %s", r.source, r.refusal)
            else:
                tally.classified += 1
                if extras:
                    scan = write_extras(extras, r, max_value, engine.args.remote)
        finally:
            if page is not None:
                page.add(r, scan)  # the scan decoded for the extras, not decoded again
    return tally


def no_inputs(args, inputs):
    """The usage error for a run that found nothing to score, with what would find more."""
    msg = f"no inputs: {', '.join(args.paths)} hold(s) no images or DICOM files"
    if inputs.subfolders:
        msg += f" ({inputs.subfolders} sub-folder(s) not searched: -r descends into them)"
    if inputs.skipped:
        msg += f"; {len(inputs.skipped)} file(s) skipped, e.g. {inputs.skipped[0][0]}: " \
               f"{inputs.skipped[0][1]}"
    return UsageError(msg)


def check_resume_names(existing, files):
    """UsageError where the earlier output names this run's inputs relative to another folder:
    its relative paths resolve from here to other files, and resuming would score every input
    again and write it twice."""
    keys = {input_key(f) for f in files}
    tails = {}
    for k in keys:
        tails.setdefault(os.path.basename(k), []).append(k)
    for path in existing.paths:
        if is_uri(path) or os.path.isabs(path) or input_key(path) in keys:
            continue
        rel = os.path.normpath(path)
        for k in tails.get(os.path.basename(rel), ()):
            if k.endswith(os.sep + rel):
                raise UsageError(
                    f"--resume: {existing.path} names its inputs relative to the folder the "
                    f"earlier run started in ({path} there is {k}; from here it would be "
                    f"{input_key(path)}): run from that folder, or write a new output")


class Page:
    """The results page, if asked for: it holds a row for every row written, and says when the
    run was interrupted."""

    def __init__(self, args, engine, overlays):
        self.page = None
        if args.report:
            from .page import ResultsPage
            self.page = ResultsPage(args.report, engine.spec, engine.variant, overlays)

    def close(self, writer, interrupted=None):
        if self.page is None:
            return
        if len(self.page.rows) < writer.written:  # interrupted between the two
            self.page.add(writer.last, picture=False)
        self.page.close(interrupted)


def cmd_classify(args):
    fmt, existing = check_arguments(args)
    inputs = collect_inputs(args.paths, args.recursive,
                            args.remote.instances if args.remote else None)
    files = inputs.files
    if not files:
        raise no_inputs(args, inputs)
    if existing is not None and existing.fmt:
        check_resume_names(existing, files)
    plan = resume_plan(files, existing, args.retry_failed)
    providers = args.providers.split(",") if args.providers else None
    warnings = setup_logging(args.log, console=False)
    quiet_opencv()
    stdout = sys.stdout  # the rows' stream, whatever the Ray engine does with sys.stdout
    try:
        engine = Engine(args, providers)  # loads the model: only after arguments are valid
    except (XrayInferError, ValueError) as e:
        return fail(e, EXIT_USAGE)
    for path, why in inputs.skipped:  # once the run is sure to go ahead
        log.info("%s: skipped: %s", path, why)
    class_names = engine.spec.class_names
    appending = existing is not None and existing.fmt is not None
    if appending and fmt == "csv" and existing.columns != header(class_names):
        return fail(f"{args.output} has columns {','.join(existing.columns)}; this model writes "
                    f"{','.join(header(class_names))}. Resume with the model that wrote it, or "
                    f"write a new file", EXIT_USAGE)
    earlier, target = None, args.output
    if appending and fmt == "parquet":
        # Parquet is written whole: the earlier rows (less those retried) and the new ones go
        # to a new file, which replaces the old one when the run ends, interrupted or not.
        earlier = existing.kept_table(plan.retried)
        target = f"{args.output}.tmp{os.getpid()}"
    elif appending and (existing.partial or plan.retried):
        # Drop a row cut by an interruption, and the failed rows about to be retried, by
        # replacing the file in one step.
        tmp = f"{args.output}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8", newline="", errors=TEXT_ERRORS) as f:
            f.write(existing.without(plan.retried))
        os.replace(tmp, args.output)
    if not args.output:
        stdout.reconfigure(errors=TEXT_ERRORS)  # file names that are not UTF-8, as they are
    stream = open_output(target, fmt, append=appending and fmt != "parquet") if args.output \
        else stdout
    files = plan.files
    progress = Progress(len(files), not args.quiet and sys.stderr.isatty() and len(files) > 0)
    writer = ResultWriter(stream, fmt, class_names, write_header=not appending, earlier=earlier)
    overlays = Overlays(args.heatmaps) if args.heatmaps else None
    dicom_out = DicomResults(args.dicom_out, engine.clf, args.remote) if args.dicom_out \
        else None
    page, interrupted = Page(args, engine, overlays), None
    try:
        with CtrlC() as ctrl_c:
            tally = score(engine, files, writer, progress,
                          [w for w in (overlays, dicom_out) if w], page.page, ctrl_c)
    except KeyboardInterrupt:
        progress.close()
        interrupted = f"interrupted after {progress.done} of {len(files)} inputs"
        return fail(f"{interrupted}; rows written so far are complete ("
                    f"{resume_hint(args)})", EXIT_INTERRUPTED)
    except BrokenPipeError:
        return pipe_closed()
    except Exception as e:
        if args.engine != "ray":
            raise
        from ..distributed import COLOUR, failure_reason
        progress.close()  # a read that failed for good, a lost worker node, a lost row
        interrupted = f"the Ray job failed after {progress.done} of {len(files)} inputs"
        # The whole account (workers' tracebacks included) into the log: what Ray prints of it
        # on its own may still be in transit when the process exits.
        log.error("the Ray job failed: %s", COLOUR.sub("", str(e)))
        return fail(f"{interrupted}: {failure_reason(e)}; rows written so far are complete "
                    f"({resume_hint(args)})", EXIT_JOB_FAILED)
    finally:
        try:
            writer.close()
            if stream is not stdout:
                stream.close()
        except BrokenPipeError:
            pass  # reported above
        if target != args.output:
            os.replace(target, args.output)
        page.close(writer, interrupted)  # an interrupted run's page shows the rows written
    progress.close()
    if not args.quiet:
        print(summary_line(tally, plan, inputs=inputs, args=args, overlays=overlays,
                           dicom_out=dicom_out, warnings=warnings.count), file=sys.stderr)
    for r in tally.failures[:20]:
        print(f"  {r.source}: {r.error}", file=sys.stderr)
    if len(tally.failures) > 20:
        print(f"  ... and {len(tally.failures) - 20} more (see the error column)",
              file=sys.stderr)
    return EXIT_INPUT_FAILED if tally.failures else EXIT_OK


def resume_hint(args):
    """What carries on after a run that stopped early."""
    if not args.output:
        return "write to a file with -o to be able to resume"
    if is_uri(args.output):
        return "an object in a store is written whole: rerun with --overwrite"
    return "rerun with --resume"


def pipe_closed():
    """Standard output was closed by its reader (``| head``): stop quietly, as other tools do;
    what Python would flush into the closed pipe at exit goes nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_PIPE_CLOSED


def add_parser(subparsers):
    c = subparsers.add_parser("classify", help="classify image files and folders",
                              description=f"Folders contribute files ending in "
                                          f"{', '.join(IMAGE_EXTENSIONS)} (any case) and other "
                                          f"files whose content is an image or DICOM; files "
                                          f"named explicitly are always read. A PATH may be a "
                                          f"URI that pyarrow reads (s3://, gs://, file://; "
                                          f"needs pyarrow).")
    c.add_argument("paths", nargs="+", metavar="PATH")
    c.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders")
    c.add_argument("-o", "--output", help="write results here, a path or a URI such as "
                                          "s3://bucket/run1.parquet (default: stdout)")
    c.add_argument("-f", "--format", choices=FORMATS,
                   help="output format (default: jsonl for a .jsonl/.json/.ndjson --output, "
                        "parquet for .parquet, else csv)")
    c.add_argument("--resume", action="store_true",
                   help="skip inputs already in --output and append the rest (format and "
                        "columns are the file's own; a row cut by an interruption is redone)")
    c.add_argument("--retry-failed", action="store_true",
                   help="with --resume: score again the inputs whose row holds an error "
                        "(their old rows are replaced)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    c.add_argument("--model", help="ONNX model exported by the trainer (default: bundled)")
    c.add_argument("--providers", help="comma-separated ONNX Runtime providers, e.g. "
                                       "CUDAExecutionProvider,CPUExecutionProvider")
    c.add_argument("--batch-size", type=int,
                   help=f"images per inference call (default: {CPU_BATCH_SIZE} on the CPU, "
                        f"{DEFAULT_BATCH_SIZE} on a GPU)")
    c.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads per inference "
                                               "call (default: 1 on the CPU)")
    c.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                   help="which variant of the model runs: auto (float16 on CUDA, int8 on a CPU "
                        "with int8 dot products, where the variants exist; else float32) or "
                        "that one (xray-infer info says which auto picks here)")
    c.add_argument("--decode", choices=DECODE_MODES, default="reduced",
                   help="reduced: a JPEG much larger than the model's input decodes at a "
                        "reduced size (faster; see docs/benchmarks.md for its parity); full: "
                        "every image at full size")
    c.add_argument("--max-value", type=max_value, metavar="N",
                   help="the maximum of 16-bit PNG and TIFF inputs that declare no bit depth of "
                        "their own, e.g. 4095 for 12-bit values (default: inferred as DICOM's "
                        "BitsStored would; docs/inputs.md)")
    c.add_argument("--workers", type=int,
                   help="worker threads (default: CPUs; on the CPU each decodes and scores "
                        "batches of its own); with --engine ray, the "
                        "number of Ray workers (default: one per GPU share, else per CPU)")
    c.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: in this process; ray: on Ray Data workers, this machine's or "
                        "a cluster's (--address), same rows (needs the ray extra)")
    c.add_argument("--address", help="with --engine ray: the cluster, HOST:PORT, "
                                     "ray://HOST:PORT or auto (default: a local Ray)")
    c.add_argument("--gpus-per-worker", type=float,
                   help="with --engine ray: GPUs each worker holds (fractions share a GPU)")
    c.add_argument("--cpus-per-worker", type=float,
                   help="with --engine ray: CPUs (decode threads) per worker (default: the "
                        "cluster's CPUs shared among the workers)")
    c.add_argument("--heatmaps", metavar="DIR",
                   help="write one PNG per classified input here: the scan with the predicted "
                        "class's activation map over it, label and probabilities")
    c.add_argument("--dicom-out", metavar="DIR|URL", type=dicomweb_options.folder_or_url,
                   help="for every classified DICOM input, a Structured Report (TID 1500) and a "
                        "Secondary Capture of its heatmap: files in this folder, or stored by "
                        "STOW-RS at this DICOMweb base URL (http:// or https://; needs the "
                        "dicomweb extra)")
    c.add_argument("--query", type=dicomweb_options.query, metavar="KEY=VALUE[&...]",
                   help="with a DICOMweb base URL as input: score every instance of the "
                        "studies this QIDO-RS search finds, e.g. ModalitiesInStudy=DX")
    dicomweb_options.add_options(c, "dicomweb-", "the DICOMweb server(s)")
    c.add_argument("--scope", choices=("on", "off"), default="on",
                   help="on: no label for inputs the model was not made for (other body parts, "
                        "views, modalities, ages; images unlike its training radiographs), "
                        "status out_of_scope; off: label every decodable radiograph (research "
                        "on other populations; recorded in each row)")
    c.add_argument("--ages", type=ages, metavar="LOW-HIGH",
                   help="with --scope on: accept DICOM patients of these ages in years "
                        "(default: the model's accepted range, its training range)")
    c.add_argument("--report", metavar="HTML",
                   help="also write a results page here: one self-contained HTML file (its "
                        "thumbnails in HTML_files/ beside it) with a row per input of this run, "
                        "filters, sorting and a summary")
    c.add_argument("--log", metavar="FILE",
                   help="write library warnings and per-input failures here")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")
    c.set_defaults(fn=cmd_classify)
