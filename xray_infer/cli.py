"""Command line: ``xray-infer classify PATH...`` and ``xray-infer info``.

Exit status: 0 when every input was classified or refused as out of scope, 1 when any input
failed (each failure is a row in the output and is summarised on stderr), 2 for usage errors
(reported before the model loads and before any output file is touched), 3 when a Ray job
failed as a whole (rows written until then are complete), 130 when interrupted.

Nothing heavy is imported until the arguments have been checked.
"""
import argparse
import csv
import io
import json
import logging
import os
import sys
import time
from pathlib import Path

from .errors import UsageError
from .inputs import IMAGE_EXTENSIONS, collect_inputs, input_key, is_uri
from .node.policy import DEFAULT_AE_TITLE, DEFAULT_HOST, Allowlist, Caller, Limits, check_ae_title
from .node.policy import DEFAULT_BATCH_SIZE as NODE_BATCH_SIZE
from .output import (FORMATS, TEXT_ERRORS, ResultWriter, csv_value, format_for, header,
                     open_output, output_exists)
from .peer import Peer
from .scope import parse_ages
from .spec import DEFAULT_BATCH_SIZE

EXIT_OK, EXIT_INPUT_FAILED, EXIT_USAGE, EXIT_JOB_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

log = logging.getLogger("xray_infer.cli")


class Existing:
    """An earlier output file, read for ``--resume`` without changing it.

    ``fmt`` and ``columns`` come from the file itself; ``complete`` is the text up to its last
    newline (a row cut by an interruption is dropped); ``rows`` maps each input's key to
    whether its row holds an error.
    """

    def __init__(self, path):
        self.path = path
        try:
            text = Path(path).read_text(encoding="utf-8", errors=TEXT_ERRORS)
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"{path}: cannot read the results file to resume: {e}") from None
        cut = text.rfind("\n") + 1
        self.complete, self.partial = text[:cut], text[cut:]
        lines = self.complete.splitlines()
        self.fmt, self.columns, self.rows = None, None, {}
        if not lines:
            return
        if lines[0].startswith("{"):
            self.fmt = "jsonl"
            for n, line in enumerate(lines, 1):
                try:
                    row = json.loads(line)
                    self.rows[input_key(row["path"])] = row["status"] == "failed"
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise UsageError(f"{path}, line {n}: not a row this program wrote; "
                                     f"refusing to append to it") from None
        else:
            self.fmt = "csv"
            reader = csv.reader(io.StringIO(self.complete))
            self.columns = next(reader)
            if self.columns[:2] != ["path", "label"] or "error" not in self.columns:
                raise UsageError(f"{path}: first line is neither a CSV header of this program "
                                 f"nor a JSON row; refusing to append to it")
            # Files of earlier versions have no status column (they are refused below, by
            # their columns): read them far enough to say so.
            status = self.columns.index("status" if "status" in self.columns else "error")
            for n, row in enumerate(reader, 2):
                if len(row) != len(self.columns):
                    raise UsageError(f"{path}, line {n}: {len(row)} fields where the header has "
                                     f"{len(self.columns)}; refusing to append to it")
                self.rows[input_key(csv_value(row[0]))] = row[status] not in ("classified",
                                                                   "out_of_scope", "")

    def without(self, keys):
        """The complete text with the rows of ``keys`` left out."""
        if not keys:
            return self.complete
        lines = self.complete.splitlines(keepends=True)
        if self.fmt == "jsonl":
            return "".join(ln for ln in lines if input_key(json.loads(ln)["path"]) not in keys)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        reader = csv.reader(io.StringIO(self.complete))
        writer.writerow(next(reader))
        for row in reader:
            if input_key(csv_value(row[0])) not in keys:
                writer.writerow(row)
        return out.getvalue()


class _Progress:
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


class _Names:
    """Output names after inputs (``scan``); a name met twice in one run gets a suffix from the
    input's path, so nothing is overwritten."""

    def __init__(self):
        self.used = set()

    def __call__(self, source):
        import hashlib
        name = Path(source).stem
        if name in self.used:
            name += "-" + hashlib.sha1(input_key(source).encode()).hexdigest()[:8]
        self.used.add(name)
        return name


class _Overlays:
    """One overlay PNG per classified input: the scan, its heatmap, label and probabilities."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.names, self.written, self.failed = _Names(), 0, 0

    def write(self, r, scan):
        import cv2

        from .heatmap import caption, overlay
        try:
            path = self.folder / f"{self.names(r.source)}.png"
            if not cv2.imwrite(str(path), overlay(scan.pixels, scan.maxval, r.heatmap,
                                                  caption(r))):
                raise OSError("OpenCV could not write the PNG")
            self.written += 1
        except Exception as e:  # the row is written; a missing picture is reported, not fatal
            self.failed += 1
            log.warning("%s: heatmap not written: %s", r.source, e)


class _DicomResults:
    """For each classified DICOM input, a Structured Report and a Secondary Capture of its
    heatmap (``name.SR.dcm``, ``name.SC.dcm``); other inputs are counted, not converted."""

    def __init__(self, folder, clf):
        from .dicom_results import model_digest
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.spec, self.digest = clf.spec, model_digest(clf.model_path)
        self.names, self.written, self.not_dicom, self.failed = _Names(), 0, 0, 0

    def write(self, r, scan):
        import pydicom

        from .dicom import is_dicom
        from .dicom_results import results_for
        try:
            with open(r.source, "rb") as f:
                head = f.read(132)
            if not is_dicom(head, r.source):
                self.not_dicom += 1
                return
            source = pydicom.dcmread(r.source, stop_before_pixels=True)
            name = self.names(r.source)
            sr, sc = results_for(source, r, scan.pixels, scan.maxval, self.spec, self.digest)
            sr.save_as(self.folder / f"{name}.SR.dcm", enforce_file_format=True)
            sc.save_as(self.folder / f"{name}.SC.dcm", enforce_file_format=True)
            self.written += 1
        except Exception as e:  # the row is written; missing DICOM results are reported
            self.failed += 1
            log.warning("%s: DICOM results not written: %s", r.source, e)


def _write_extras(writers, r):
    """Overlays and DICOM results of one classified input; they need the scan itself, decoded
    again, once for all of them. A failure here is counted and logged, never fatal."""
    from .decode import read_image
    from .errors import DecodeError
    try:
        scan = read_image(r.source)
    except DecodeError as e:  # changed on disk since it was scored
        for w in writers:
            w.failed += 1
        log.warning("%s: no heatmap or DICOM results: %s", r.source, e.reason)
        return
    for w in writers:
        w.write(r, scan)


def _positive(name, value):
    if value is not None and value < 1:
        raise UsageError(f"{name} must be at least 1, got {value}")


def check_arguments(args):
    """Every option value and combination, before anything is loaded or written.

    Returns (format, the earlier output or None)."""
    _positive("--batch-size", args.batch_size)
    _positive("--threads", args.threads)
    _positive("--workers", args.workers)
    if args.ages is not None and args.scope == "off":
        raise UsageError("--ages widens the scope gate; with --scope off nothing is gated")
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
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UsageError("--engine ray needs Ray Data: pip install 'xray-infer[ray]'") from None
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other; choose one")
    if args.retry_failed and not args.resume:
        raise UsageError("--retry-failed needs --resume")
    if args.resume and not args.output:
        raise UsageError("--resume needs --output")
    if args.model and not os.path.isfile(args.model):
        raise UsageError(f"--model {args.model}: no such file")
    if args.log and os.path.isdir(args.log):
        raise UsageError(f"--log {args.log}: is a directory")
    for option, folder in (("--heatmaps", args.heatmaps), ("--dicom-out", args.dicom_out)):
        if folder and os.path.exists(folder) and not os.path.isdir(folder):
            raise UsageError(f"{option} {folder}: exists and is not a directory")
    if args.dicom_out:
        try:
            import highdicom  # noqa: F401
            import pydicom  # noqa: F401
        except ImportError:
            raise UsageError("--dicom-out needs pydicom and highdicom: "
                             "pip install 'xray-infer[dicom]'") from None
    fmt = args.format or (format_for(args.output) if args.output else "csv")
    remote = bool(args.output) and is_uri(args.output)
    if fmt == "parquet" or remote:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError("Parquet output and URI outputs need pyarrow: "
                             "pip install pyarrow") from None
    if fmt == "parquet" and not args.output:
        raise UsageError("Parquet output needs --output FILE")
    if args.resume and (fmt == "parquet" or remote):
        raise UsageError("--resume appends to a local CSV or JSON Lines file; Parquet files "
                         "and objects in a store are written whole")
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


class _LogSink(logging.Handler):
    """Library warnings go to the log (``--log FILE``), never between the progress lines;
    without a log they are counted for the summary."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        self.count += 1


def _setup_logging(path):
    logging.captureWarnings(True)
    sink = _LogSink()
    root = logging.getLogger()
    root.addHandler(sink)
    if path:
        # delay: the file appears with its first line, not for a run that stops at a usage error
        handler = logging.FileHandler(path, encoding="utf-8", errors="backslashreplace",
                                      delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    return sink


class _Engine:
    """Where the scoring runs: a Classifier in this process, or Ray workers (``--engine ray``:
    connected here, so that an unreachable cluster is reported before any output is touched).
    Both yield one Result per input, in input order."""

    def __init__(self, args, providers):
        self.args, self.providers = args, providers
        if args.engine == "ray":
            from . import distributed
            from .model import load_model
            self.clf, self.spec = None, load_model(args.model, providers=["CPUExecutionProvider"])[1]
            if args.scope == "on" and not self.spec.scope_output:
                from .errors import ModelError
                raise ModelError(f"{args.model}: this model has no scope gate; classify with "
                                 f"--scope off, or export it again (`python -m trainer scope`)")
            # Ray Data's notices (plan, progress bars off) would land between our progress lines
            logging.getLogger("ray.data").setLevel(logging.ERROR)
            distributed.connect(args.address)
            distributed.plan(args.workers, args.gpus_per_worker or 0.0, args.cpus_per_worker)
        else:
            from .classifier import Classifier
            self.clf = Classifier(args.model, providers=providers, batch_size=args.batch_size,
                                  threads=args.threads, workers=args.workers,
                                  heatmaps=bool(args.heatmaps or args.dicom_out),
                                  scope=args.scope, ages=args.ages)
            self.spec = self.clf.spec

    def results(self, files):
        if self.clf is not None:
            return self.clf.iter_classify(files)
        from . import distributed
        a = self.args
        return distributed.iter_results(
            files, address=a.address, model=a.model, workers=a.workers,
            gpus_per_worker=a.gpus_per_worker or 0.0, cpus_per_worker=a.cpus_per_worker,
            batch_size=a.batch_size, providers=self.providers, scope=a.scope, ages=a.ages)


def cmd_classify(args):
    fmt, existing = check_arguments(args)
    files, repeats = collect_inputs(args.paths, args.recursive)
    if not files:
        raise UsageError(f"no inputs: {', '.join(args.paths)} hold(s) no files ending in "
                         f"{', '.join(IMAGE_EXTENSIONS)}")
    skipped, skipped_failed, retried = 0, 0, set()
    if existing is not None:
        keys = [input_key(f) for f in files]
        if args.retry_failed:
            retried = {k for k in keys if existing.rows.get(k)}
        done = {k for k in existing.rows if k not in retried}
        skipped = sum(k in done for k in keys)
        skipped_failed = sum(k in done and existing.rows[k] for k in keys)
        files = [f for f, k in zip(files, keys) if k not in done]
    providers = args.providers.split(",") if args.providers else None
    sink = _setup_logging(args.log)
    _quiet_opencv()

    from .errors import XrayInferError
    try:
        engine = _Engine(args, providers)  # loads the model: only after arguments are valid
    except (XrayInferError, ValueError) as e:
        print(f"xray-infer: {e}", file=sys.stderr)
        return EXIT_USAGE
    class_names = engine.spec.class_names
    appending = existing is not None and existing.fmt is not None
    if appending and fmt == "csv" and existing.columns != header(class_names):
        print(f"xray-infer: {args.output} has columns {','.join(existing.columns)}; this model "
              f"writes {','.join(header(class_names))}. Resume with the model that wrote "
              f"it, or write a new file", file=sys.stderr)
        return EXIT_USAGE
    if appending and (existing.partial or retried):
        # Drop a row cut by an interruption, and the failed rows about to be retried, by
        # replacing the file in one step.
        tmp = f"{args.output}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8", newline="", errors=TEXT_ERRORS) as f:
            f.write(existing.without(retried))
        os.replace(tmp, args.output)
    if not args.output:
        sys.stdout.reconfigure(errors=TEXT_ERRORS)  # file names that are not UTF-8, as they are
    stream = open_output(args.output, fmt, append=appending) if args.output else sys.stdout
    progress = _Progress(len(files), not args.quiet and sys.stderr.isatty() and len(files) > 0)
    writer = ResultWriter(stream, fmt, class_names, write_header=not appending)
    failures, out_of_scope = [], 0
    overlays = _Overlays(args.heatmaps) if args.heatmaps else None
    dicom_out = _DicomResults(args.dicom_out, engine.clf) if args.dicom_out else None
    extras = [w for w in (overlays, dicom_out) if w]
    try:
        for r in engine.results(files):
            writer.write(r)
            progress.update(r.status != "failed")
            if r.status == "failed":
                failures.append(r)
                log.info("%s: %s", r.source, r.error)
            elif r.status == "out_of_scope":
                out_of_scope += 1
                log.info("%s: %s", r.source, r.refusal)
            elif extras:
                _write_extras(extras, r)
    except KeyboardInterrupt:
        progress.close()
        print(f"xray-infer: interrupted after {progress.done} of {len(files)} inputs; rows "
              f"written so far are complete (rerun with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if args.engine != "ray":
            raise
        progress.close()  # a read that failed for good, a lost worker node, a lost row
        print(f"xray-infer: the Ray job failed after {progress.done} of {len(files)} inputs: "
              f"{e}; rows written so far are complete (rerun with --resume)", file=sys.stderr)
        return EXIT_JOB_FAILED
    finally:
        writer.close()
        if stream is not sys.stdout:
            stream.close()
    progress.close()
    if not args.quiet:
        msg = (f"xray-infer: {len(files) - len(failures) - out_of_scope} classified, "
               f"{out_of_scope} out of scope, {len(failures)} failed")
        if args.scope == "off":
            msg += " (scope gate off)"
        if skipped:
            msg += f", {skipped} skipped (already in {args.output}"
            msg += (f"; {skipped_failed} of them with an error (--retry-failed scores them "
                    f"again))" if skipped_failed else ")")
        if retried:
            msg += f", {len(retried)} failed earlier and retried"
        if repeats:
            msg += f", {repeats} repeated input(s) scored once"
        if overlays:
            msg += f"; {overlays.written} heatmap(s) in {args.heatmaps}"
            if overlays.failed:
                msg += f", {overlays.failed} not written (see --log)"
        if dicom_out:
            msg += f"; DICOM SR + SC for {dicom_out.written} input(s) in {args.dicom_out}"
            if dicom_out.not_dicom:
                msg += f", none for {dicom_out.not_dicom} non-DICOM input(s)"
            if dicom_out.failed:
                msg += f", {dicom_out.failed} not written (see --log)"
        if sink.count:
            msg += (f"; {sink.count} library warning(s) " +
                    (f"in {args.log}" if args.log else "(--log FILE keeps them)"))
        print(msg, file=sys.stderr)
    for r in failures[:20]:
        print(f"  {r.source}: {r.error}", file=sys.stderr)
    if len(failures) > 20:
        print(f"  ... and {len(failures) - 20} more (see the error column)", file=sys.stderr)
    return EXIT_INPUT_FAILED if failures else EXIT_OK


def cmd_info(args):
    import onnxruntime as ort

    from . import _preprocess
    from .classifier import Classifier
    from .errors import XrayInferError
    try:
        clf = Classifier(args.model, providers=["CPUExecutionProvider"], scope=False)
    except XrayInferError as e:
        print(f"xray-infer: {e}", file=sys.stderr)
        return EXIT_USAGE
    info = {"model": str(clf.model_path), "spec": clf.spec.to_dict(),
            "onnxruntime": ort.__version__, "available_providers": ort.get_available_providers(),
            "kernel": {"module": _preprocess.__file__, "openmp": _preprocess.OPENMP}}
    if args.json:
        print(json.dumps(info, indent=1, default=list))
        return EXIT_OK
    s = clf.spec
    print(f"model          {info['model']}")
    print(f"version        {s.model_version}")
    print(f"classes        {', '.join(s.class_names)}")
    print(f"input          1x{s.input_size}x{s.input_size} grayscale, resize {s.resize}, "
          f"(x/maxval - {s.mean}) / {s.std}")
    for split in ("val", "test"):
        m = s.metrics.get(split)
        if m:
            print(f"{split + ' metrics':<15}accuracy {m['accuracy']:.4f}, macro-F1 "
                  f"{m['macro_f1']:.4f}, normal-vs-pneumonia accuracy {m['binary_accuracy']:.4f}, "
                  f"AUC {m['binary_auc']:.4f} (n={m['n']})")
    print(f"training data  {s.training_data}")
    p = s.population
    if p:
        print(f"population     {'/'.join(p['modalities'])} {'/'.join(p['views'])} "
              f"{'/'.join(p['body_parts'])}, ages {p['accepted_ages'][0]}-{p['accepted_ages'][1]} "
              f"accepted (trained on {p['training_ages'][0]}-{p['training_ages'][1]})")
    if s.scope_output:
        print(f"scope gate     threshold {s.scope['threshold']:.1f} ({s.scope['threshold_rule']}; "
              f"fitted on {s.scope['fitted_on']})")
    else:
        print("scope gate     none (classify with --scope off)")
    print(f"onnxruntime    {info['onnxruntime']}; providers: "
          f"{', '.join(info['available_providers'])}")
    print(f"kernel         {'OpenMP' if _preprocess.OPENMP else 'serial'} build, "
          f"{Path(_preprocess.__file__).name}")
    return EXIT_OK


def _checked(parse):
    """An argparse ``type=`` from a parser that raises ValueError with the reason."""
    def check(text):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    check.__name__ = parse.__name__  # argparse names the option's type in its messages
    return check


_peer, _ages, _ae_title, _caller = map(_checked, (Peer.parse, parse_ages, check_ae_title,
                                                  Caller.parse))


def _port(text):
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1 to 65535)")
    return int(text)


def _whole(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _readable_file(text):
    if not os.path.isfile(text) or not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text}: not a readable file")
    return text


def _dicom_networking():
    try:
        import highdicom  # noqa: F401
        import prometheus_client  # noqa: F401
        import pynetdicom  # noqa: F401
    except ImportError:
        raise UsageError("DICOM networking needs pynetdicom, highdicom and prometheus_client: "
                         "pip install 'xray-infer[dicom]'") from None


def _tls(args, prefix, server):
    """An SSLContext from --{prefix}cert/key/ca (all three or none), or None."""
    names = [f"{prefix}tls_{k}" for k in ("cert", "key", "ca")]
    values = [getattr(args, n) for n in names]
    if not any(values):
        return None
    flags = ["--" + n.replace("_", "-") for n in names]
    if not all(values):
        raise UsageError(f"TLS needs all of {', '.join(flags)}")
    import ssl
    from .node.network import tls_context
    try:
        return tls_context(*values, server=server)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"{', '.join(flags)}: {e}") from None


def _setup_node_logging(path, verbose):
    """One log line per event on stderr (and ``path``). pydicom's and highdicom's chatter, and
    warnings, are off unless ``verbose``: they quote values from the objects (patient data)."""
    handlers = [logging.StreamHandler(sys.stderr)]
    if path:
        handlers.append(logging.FileHandler(path, encoding="utf-8"))
    logging.basicConfig(level=logging.INFO, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("pynetdicom", "pydicom", "highdicom", "py.warnings"):
        logging.getLogger(name).setLevel(logging.WARNING if verbose else logging.CRITICAL)
    logging.captureWarnings(True)


def _dicom_files(paths, recursive):
    """The files ``send`` sends: those collect_inputs finds, and in folders also files without
    an image extension that carry the DICM marker (archives often name them by UID alone)."""
    from .inputs import dicom_files
    files, _ = collect_inputs(paths, recursive)
    extra = dicom_files(paths, recursive)
    return files + [f for f in extra if f not in set(files)]


def cmd_send(args):
    _dicom_networking()
    files = _dicom_files(args.paths, args.recursive)
    if not files:
        raise UsageError(f"no files to send: {', '.join(args.paths)} hold(s) no DICOM files")
    tls = _tls(args, "", server=False)
    from .node import AssociationError, send
    report = (lambda line: None) if args.quiet else print
    try:
        outcome = send(files, args.to, ae_title=args.ae_title, report=report, tls=tls)
    except AssociationError as e:
        print(f"xray-infer: {e}", file=sys.stderr)
        return EXIT_INPUT_FAILED
    refused = [p for p, v in outcome.items() if not isinstance(v, int)]
    if not args.quiet:
        print(f"xray-infer: {len(outcome) - len(refused)} stored, {len(refused)} not stored, "
              f"to {args.to}", file=sys.stderr)
    return EXIT_INPUT_FAILED if refused else EXIT_OK


def _listen_plan(args):
    """Everything ``listen`` needs, checked before the model loads (UsageError otherwise)."""
    from .node.spool import Spool
    if not args.allow and not args.allow_any:
        raise UsageError("say who may send: --allow AET@HOST (repeatable), or --allow-any to "
                         "admit every peer that can reach the port")
    if args.allow and args.allow_any:
        raise UsageError("--allow and --allow-any contradict each other")
    if args.model and not os.path.isfile(args.model):
        raise UsageError(f"--model {args.model}: no such file")
    if args.ages is not None and args.scope == "off":
        raise UsageError("--ages widens the scope gate; with --scope off nothing is gated")
    allow = Allowlist(tuple(args.allow or ()), any=args.allow_any)
    try:
        allow = allow.resolved()
    except ValueError as e:
        raise UsageError(str(e)) from None
    limits = Limits(max_associations=args.max_associations, max_per_peer=args.max_per_peer,
                    max_object_mb=args.max_object_mb, min_free_mb=args.min_free_mb,
                    max_refusals=args.max_refusals, network_timeout=args.idle_timeout)
    try:
        Spool(args.spool, limits.min_free_mb * 2 ** 20).check_writable()
    except OSError as e:
        raise UsageError(f"--spool {args.spool}: not usable: {e}") from None
    return allow, limits, _tls(args, "", server=True), _tls(args, "forward_", server=False)


def cmd_listen(args):
    import signal
    import threading
    _dicom_networking()
    _positive("--batch-size", args.batch_size)
    allow, limits, tls, forward_tls = _listen_plan(args)
    _setup_node_logging(args.log, args.verbose)
    _quiet_opencv()
    from .errors import XrayInferError
    from .node import Node
    try:
        node = Node(args.port, args.forward, args.spool, allow, ae_title=args.ae_title,
                    host=args.host, batch_size=args.batch_size, model=args.model, limits=limits,
                    tls=tls, forward_tls=forward_tls, metrics_port=args.metrics_port,
                    scope=args.scope, ages=args.ages)
    except XrayInferError as e:
        print(f"xray-infer: {e}", file=sys.stderr)
        return EXIT_USAGE
    stopping = []

    def stop(signum, _frame):
        if not stopping:
            stopping.append(signum)
            log.info("signal %d: stopping", signum)
            threading.Thread(target=node.stop, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        node.start()
    except OSError as e:
        print(f"xray-infer: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        node.stop()
        return EXIT_USAGE
    node.wait()
    return EXIT_OK


def _tls_options(parser, prefix="", what="this end"):
    flag = f"--{prefix}tls-"
    parser.add_argument(flag + "cert", type=_readable_file, metavar="FILE",
                        help=f"TLS: {what}'s certificate (PEM); with the key and CA, DICOM TLS")
    parser.add_argument(flag + "key", type=_readable_file, metavar="FILE",
                        help=f"TLS: {what}'s private key (PEM)")
    parser.add_argument(flag + "ca", type=_readable_file, metavar="FILE",
                        help="TLS: the CA a peer's certificate must be signed by (PEM)")


def build_parser():
    p = argparse.ArgumentParser(prog="xray-infer", description="Classify pediatric chest X-rays "
                                "(normal / bacterial / viral pneumonia). Not a diagnostic device.")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("classify", help="classify image files and folders",
                       description=f"Folders contribute files ending in "
                                   f"{', '.join(IMAGE_EXTENSIONS)} (any case); files named "
                                   f"explicitly are always read. A PATH may be a URI that "
                                   f"pyarrow reads (s3://, gs://, file://; needs pyarrow).")
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
    c.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="images per inference call")
    c.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    c.add_argument("--workers", type=int,
                   help="decode/preprocess threads (default: CPUs); with --engine ray, the "
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
    c.add_argument("--dicom-out", metavar="DIR",
                   help="for every classified DICOM input, write a Structured Report (TID 1500) "
                        "and a Secondary Capture of its heatmap here (needs the dicom extra)")
    c.add_argument("--scope", choices=("on", "off"), default="on",
                   help="on: no label for inputs the model was not made for (other body parts, "
                        "views, modalities, ages; images unlike its training radiographs), "
                        "status out_of_scope; off: label every decodable radiograph (research "
                        "on other populations; recorded in each row)")
    c.add_argument("--ages", type=_ages, metavar="LOW-HIGH",
                   help="with --scope on: accept DICOM patients of these ages in years "
                        "(default: the model's accepted range, its training range)")
    c.add_argument("--log", metavar="FILE",
                   help="write library warnings and per-input failures here")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")
    c.set_defaults(fn=cmd_classify)
    n = sub.add_parser("send", help="send DICOM files to a DICOM node or PACS (C-STORE)")
    n.add_argument("paths", nargs="+", metavar="PATH")
    n.add_argument("--to", required=True, type=_peer, metavar="HOST:PORT[:AET]")
    n.add_argument("--ae-title", type=_ae_title, default=DEFAULT_AE_TITLE,
                   help="this sender's AE title")
    n.add_argument("-r", "--recursive", action="store_true")
    n.add_argument("-q", "--quiet", action="store_true")
    _tls_options(n)
    n.set_defaults(fn=cmd_send)
    d = Limits()
    li = sub.add_parser("listen", help="a DICOM node: receive radiographs, classify them, "
                                       "forward SR + Secondary Capture results",
                        description="Only callers named with --allow may associate. See the "
                                    "README, 'Deploying the node'.")
    li.add_argument("--port", type=_port, required=True)
    li.add_argument("--host", default=DEFAULT_HOST,
                    help=f"interface to listen on (default {DEFAULT_HOST}; 0.0.0.0 for all)")
    li.add_argument("--ae-title", type=_ae_title, default=DEFAULT_AE_TITLE,
                    help="this node's AE title; a caller must call it by this name")
    li.add_argument("--allow", action="append", type=_caller, metavar="AET@HOST",
                    help="a caller that may associate (repeatable); HOST an address or name")
    li.add_argument("--allow-any", action="store_true",
                    help="admit any caller that can reach the port (logged as a warning)")
    li.add_argument("--forward", required=True, type=_peer, metavar="HOST:PORT[:AET]",
                    help="where the results go (a PACS)")
    li.add_argument("--spool", default="xray-infer-spool",
                    help="received instances wait here until their results are delivered")
    li.add_argument("--batch-size", type=int, default=NODE_BATCH_SIZE)
    li.add_argument("--model")
    li.add_argument("--max-associations", type=_whole, default=d.max_associations,
                    help=f"associations open at once, all callers (default {d.max_associations})")
    li.add_argument("--max-per-peer", type=_whole, default=d.max_per_peer,
                    help=f"connections open at once from one address (default {d.max_per_peer})")
    li.add_argument("--max-object-mb", type=_whole, default=d.max_object_mb,
                    help=f"largest data set received, and declared image (default "
                         f"{d.max_object_mb})")
    li.add_argument("--min-free-mb", type=int, default=d.min_free_mb,
                    help=f"disk space kept free in the spool; below it instances are refused "
                         f"as retryable (default {d.min_free_mb})")
    li.add_argument("--max-refusals", type=_whole, default=d.max_refusals,
                    help=f"times the destination may refuse an instance's results before it is "
                         f"quarantined in the spool's failed/ (default {d.max_refusals})")
    li.add_argument("--idle-timeout", type=_whole, default=int(d.network_timeout),
                    help=f"seconds an association may stay silent before it is closed "
                         f"(default {d.network_timeout:g})")
    li.add_argument("--metrics-port", type=_port,
                    help="serve Prometheus /metrics and /healthz on this port (on --host)")
    _tls_options(li)
    _tls_options(li, "forward-", "the forward connection")
    li.add_argument("--scope", choices=("on", "off"), default="on",
                    help="on: instances the model was not made for are acknowledged and nothing "
                         "is forwarded for them (logged, counted); off: every radiograph is "
                         "classified")
    li.add_argument("--ages", type=_ages, metavar="LOW-HIGH",
                    help="with --scope on: accepted patient ages in years")
    li.add_argument("--log", metavar="FILE", help="also write the log here")
    li.add_argument("-v", "--verbose", action="store_true",
                    help="also log pydicom's, highdicom's and pynetdicom's messages (they may "
                         "quote values from the objects)")
    li.set_defaults(fn=cmd_listen)
    i = sub.add_parser("info", help="show the model's metadata and the available providers")
    i.add_argument("--model")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(fn=cmd_info)
    return p


def _quiet_opencv():
    """OpenCV logs its own messages for every corrupt file; the CLI reports each failure itself."""
    import cv2
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # builds without the logging bindings
        pass


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UsageError as e:
        print(f"xray-infer: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
