"""Command line: ``xray-infer classify PATH...`` and ``xray-infer info``.

Exit status: 0 when every input was classified, 1 when any input failed (each failure is a row
in the output and is summarised on stderr), 2 for usage errors (reported before the model loads).
"""
import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

from .decode import IMAGE_EXTENSIONS

EXIT_OK, EXIT_INPUT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    pass


def collect_inputs(paths, recursive):
    """Expand files and folders into a list of file paths (folders: sorted, by extension).

    A path named explicitly is always included, whatever its extension, so that a bad file
    given by name gets an error row instead of vanishing; so is anything in a folder whose name
    has an image extension, a folder named ``x.jpeg`` included (it gets an error row).
    """
    files = []
    for p in paths:
        if os.path.isdir(p):
            walker = (Path(p).rglob("*") if recursive else Path(p).iterdir())
            found = sorted(str(f) for f in walker if f.suffix.lower() in IMAGE_EXTENSIONS)
            files.extend(found)
        elif os.path.lexists(p):
            files.append(p)
        else:
            raise UsageError(f"{p}: no such file or directory")
    return files


class _Writer:
    """Writes result rows as CSV or JSON Lines, flushing each so a crash loses nothing."""

    def __init__(self, stream, fmt, class_names, write_header):
        self.stream, self.fmt, self.names = stream, fmt, class_names
        if fmt == "csv":
            self.csv = csv.writer(stream)
            if write_header:
                self.csv.writerow(["path", "label"] + [f"p_{n}" for n in class_names] + ["error"])

    def write(self, r):
        if self.fmt == "csv":
            probs = ([f"{r.probabilities[n]:.6f}" for n in self.names] if r.ok
                     else [""] * len(self.names))
            self.csv.writerow([r.source, r.label or ""] + probs + [r.error or ""])
        else:
            self.stream.write(json.dumps(r.to_dict()) + "\n")
        self.stream.flush()


def done_paths(path, fmt):
    """Paths already present in an earlier output file (for --resume)."""
    with open(path, newline="") as f:
        if fmt == "csv":
            return {row["path"] for row in csv.DictReader(f)}
        done = set()
        for line in f:
            line = line.strip()
            if line:
                try:
                    done.add(json.loads(line)["path"])
                except (json.JSONDecodeError, KeyError):
                    pass  # a row cut by an interruption: its input is scored again
        return done


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


def _format_for(args):
    if args.format:
        return args.format
    if args.output and Path(args.output).suffix.lower() == ".csv":
        return "csv"
    return "jsonl" if args.output else "csv"


def cmd_classify(args):
    fmt = _format_for(args)
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.resume and not args.output:
        raise UsageError("--resume needs --output")
    if args.output and os.path.exists(args.output) and not (args.resume or args.overwrite):
        raise UsageError(f"{args.output} exists; use --resume to skip inputs already in it, "
                         f"or --overwrite")
    if args.model and not os.path.isfile(args.model):
        raise UsageError(f"--model {args.model}: no such file")
    files = collect_inputs(args.paths, args.recursive)
    skipped = 0
    if args.resume and os.path.exists(args.output):
        done = done_paths(args.output, fmt)
        skipped = sum(f in done for f in files)
        files = [f for f in files if f not in done]
    providers = args.providers.split(",") if args.providers else None

    from .classifier import Classifier  # loads onnxruntime: only after arguments are valid
    from .errors import XrayInferError
    try:
        clf = Classifier(args.model, providers=providers, batch_size=args.batch_size,
                         threads=args.threads, workers=args.workers)
    except XrayInferError as e:
        print(f"xray-infer: {e}", file=sys.stderr)
        return EXIT_USAGE

    appending = bool(args.resume and os.path.exists(args.output)
                     and os.path.getsize(args.output) > 0)
    stream = (open(args.output, "a" if appending else "w", newline="") if args.output
              else sys.stdout)
    progress = _Progress(len(files), not args.quiet and sys.stderr.isatty() and len(files) > 0)
    writer = _Writer(stream, fmt, clf.class_names, write_header=not appending)
    failures = []
    try:
        for r in clf.iter_classify(files):
            writer.write(r)
            progress.update(r.ok)
            if not r.ok:
                failures.append(r)
    except KeyboardInterrupt:
        progress.close()
        print(f"xray-infer: interrupted after {progress.done} of {len(files)} inputs; rows "
              f"written so far are complete (rerun with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if stream is not sys.stdout:
            stream.close()
    progress.close()
    if not args.quiet:
        msg = f"xray-infer: {len(files) - len(failures)} classified, {len(failures)} failed"
        if skipped:
            msg += f", {skipped} skipped (already in {args.output})"
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
        clf = Classifier(args.model, providers=["CPUExecutionProvider"])
    except XrayInferError as e:
        print(f"xray-infer: {e}", file=sys.stderr)
        return EXIT_USAGE
    info = {"model": str(clf.model_path), "spec": clf.spec.__dict__,
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
    print(f"onnxruntime    {info['onnxruntime']}; providers: "
          f"{', '.join(info['available_providers'])}")
    print(f"kernel         {'OpenMP' if _preprocess.OPENMP else 'serial'} build, "
          f"{Path(_preprocess.__file__).name}")
    return EXIT_OK


def build_parser():
    p = argparse.ArgumentParser(prog="xray-infer", description="Classify pediatric chest X-rays "
                                "(normal / bacterial / viral pneumonia). Not a diagnostic device.")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("classify", help="classify image files and folders",
                       description=f"Folders contribute files ending in "
                                   f"{', '.join(IMAGE_EXTENSIONS)} (any case); files named "
                                   f"explicitly are always read.")
    c.add_argument("paths", nargs="+", metavar="PATH")
    c.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders")
    c.add_argument("-o", "--output", help="write results here (default: stdout)")
    c.add_argument("-f", "--format", choices=("csv", "jsonl"),
                   help="output format (default: from the --output suffix; csv on stdout)")
    c.add_argument("--resume", action="store_true",
                   help="skip inputs already in --output and append the rest")
    c.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    c.add_argument("--model", help="ONNX model exported by the trainer (default: bundled)")
    c.add_argument("--providers", help="comma-separated ONNX Runtime providers, e.g. "
                                       "CUDAExecutionProvider,CPUExecutionProvider")
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    c.add_argument("--workers", type=int, help="decode/preprocess threads (default: CPUs)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")
    c.set_defaults(fn=cmd_classify)
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
    _quiet_opencv()
    try:
        return args.fn(args)
    except UsageError as e:
        print(f"xray-infer: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
