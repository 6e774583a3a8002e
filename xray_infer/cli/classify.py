"""``xray-infer classify``: score files, folders and URIs; one row per input, in input order.
The scoring loop and its reports are in ``scoring``, the engines in ``engine``, what a resumed
run scores in ``resume``."""
import logging
import os
import sys

from ..bitdepth import check_max_value
from ..errors import UsageError, XrayInferError
from ..formats import IMAGE_EXTENSIONS
from ..inputs import collect_inputs, is_uri, peek
from ..output import FORMATS, Existing, Output, format_for, output_exists
from ..scope import parse_ages
from ..spec import CPU_BATCH_SIZE, DECODE_MODES, DEFAULT_BATCH_SIZE, PRECISIONS
from . import dicomweb_options
from ._common import (EXIT_INPUT_FAILED, EXIT_INTERRUPTED, EXIT_JOB_FAILED, EXIT_OK,
                      EXIT_PIPE_CLOSED, EXIT_UNDELIVERED, EXIT_USAGE, check_scope_options,
                      check_writable_file, check_writable_folder, checked, fail, quiet_opencv,
                      require, setup_logging, whole)
from .engine import Engine
from .run import Run
from .side_outputs import DicomResults, Overlays
from .resume import check_resume_names, resume_hint, resume_plan
from .audit_options import add_audit_options, audit_trail
from .scoring import CtrlC, Page, Progress, score, summary_line

log = logging.getLogger("xray_infer.cli")


def _share(least, strict):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or value != value or value < least or (strict and value == least):
            raise ValueError(f"{text!r} is not a number {'above' if strict else 'of at least'} "
                             f"{least:g}")
        return value
    return parse


ages = checked(parse_ages)
max_value = checked(check_max_value)
gpu_share, cpu_share = checked(_share(0, strict=False)), checked(_share(0, strict=True))


def check_arguments(args):
    """Every option value and combination, before anything is loaded or written.

    Returns (format, the earlier output or None, the DICOMweb Remote or None)."""
    check_scope_options(args)
    web = dicomweb_options.check_run(args)
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
    if args.heatmap_size < 0:
        raise UsageError(f"--heatmap-size {args.heatmap_size}: a number of pixels, or 0 for "
                         f"full size")
    if args.report and os.path.exists(args.report) and not (args.overwrite or args.resume):
        raise UsageError(f"--report {args.report} exists; --overwrite replaces it (and its "
                         f"thumbnails)")
    if args.output and not is_uri(args.output):
        check_writable_file("--output", args.output)
    for option, folder in (("--heatmaps", args.heatmaps), ("--dicom-out", args.dicom_out)):
        if folder is not None and not (option == "--dicom-out"
                                       and dicomweb_options.is_dicomweb(folder)):  # STOW-RS
            check_writable_folder(option, folder)
    if args.dicom_out:
        require(["pydicom", "highdicom"], "--dicom-out", "xray-infer[dicom]")
    fmt = args.format or (format_for(args.output) if args.output else "csv")
    to_store = bool(args.output) and is_uri(args.output)
    if fmt == "parquet" or to_store:
        require(["pyarrow"], "Parquet output and URI outputs", "pyarrow")
    if fmt == "parquet" and not args.output:
        raise UsageError("Parquet output needs --output FILE")
    if args.resume and to_store:
        raise UsageError("--resume works on a local output file; an object in a store is "
                         "written whole (--overwrite replaces it)")
    existing = None
    if args.output:
        if not to_store and os.path.isdir(args.output):
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
    return fmt, existing, web


def no_inputs(args, inputs):
    """The usage error for a run that found nothing to score, with what would find more."""
    msg = (f"no inputs: {', '.join(map(str, args.paths))} "
           f"{'holds' if len(args.paths) == 1 else 'hold'} no images or DICOM files")
    if inputs.subfolders:
        msg += (f" ({inputs.subfolders} sub-folder{'' if inputs.subfolders == 1 else 's'} "
                f"not searched: -r descends into them)")
    if inputs.skipped:
        msg += f"; {len(inputs.skipped)} file(s) skipped, e.g. {inputs.skipped[0][0]}: " \
               f"{inputs.skipped[0][1]}"
    return UsageError(msg)


def cmd_classify(args):
    fmt, existing, web = check_arguments(args)
    audit = audit_trail(args, "xray-infer-classify")  # checked before the model loads
    # A DICOMweb listing is scored as it is listed, unless --resume needs every input first.
    inputs = collect_inputs(args.paths, args.recursive, web.instances if web else None,
                            stream=existing is None)
    found, files = peek(inputs.files) if inputs.streamed else (bool(inputs.files), inputs.files)
    if not found:
        raise no_inputs(args, inputs)
    if existing is not None and existing.fmt:
        check_resume_names(existing, files)
    plan = resume_plan(files, existing, args.retry_failed)
    providers = args.providers.split(",") if args.providers else None
    warnings = setup_logging(args.log, console=False)
    quiet_opencv()
    stdout = sys.stdout  # the rows' stream, whatever the Ray engine does with sys.stdout
    try:
        run = Run.of(args, fmt, web, providers)
        engine = Engine(run)  # loads the model: only after arguments are valid
    except (XrayInferError, ValueError) as e:
        return fail(e, EXIT_USAGE)
    for path, why in inputs.skipped:  # once the run is sure to go ahead
        log.info("%s: skipped: %s", path, why)
    try:
        out = Output(args.output, fmt, engine.spec.class_names, existing, plan.retried, stdout)
    except UsageError as e:
        return fail(e, EXIT_USAGE)
    files = plan.files
    total = None if inputs.streamed else len(files)  # a listing's end is not known before
    progress = Progress(total, not args.quiet and sys.stderr.isatty() and total != 0)
    overlays = Overlays(run.heatmaps, run.heatmap_size) if run.heatmaps else None
    dicom_out = DicomResults(run.dicom_out, engine.clf, web, audit) if run.dicom_out \
        else None
    if audit is not None:
        audit.start()
    page, interrupted = Page(run, engine, overlays), None
    try:
        stop = None
        if web is not None or (run.dicom_out and dicomweb_options.is_dicomweb(run.dicom_out)):
            from ..dicomweb import stop_all as stop
        with CtrlC(stop) as ctrl_c:
            tally = score(engine, files, out, progress,
                          [w for w in (overlays, dicom_out) if w], page.page, ctrl_c)
    except KeyboardInterrupt:
        progress.close()
        interrupted = f"interrupted after {progress.of()} inputs"
        return fail(f"{interrupted}; rows written so far are complete ("
                    f"{resume_hint(args)})", EXIT_INTERRUPTED)
    except UsageError as e:  # a DICOMweb listing that failed on a later page
        progress.close()
        interrupted = f"stopped after {progress.done} inputs: {e}"
        return fail(f"{interrupted}; rows written so far are complete ({resume_hint(args)})",
                    EXIT_USAGE)
    except BrokenPipeError:
        return pipe_closed()
    except Exception as e:
        if args.engine != "ray":
            raise
        from ..distributed import COLOUR, failure_reason
        progress.close()  # a read that failed for good, a lost worker node, a lost row
        interrupted = f"the Ray job failed after {progress.of()} inputs"
        # The whole account (workers' tracebacks included) into the log: what Ray prints of it
        # on its own may still be in transit when the process exits.
        log.error("the Ray job failed: %s", COLOUR.sub("", str(e)))
        return fail(f"{interrupted}: {failure_reason(e)}; rows written so far are complete "
                    f"({resume_hint(args)})", EXIT_JOB_FAILED)
    finally:
        out.close()
        page.close(out, interrupted)  # an interrupted run's page shows the rows written
        if audit is not None:
            audit.close()
    progress.close()
    if not args.quiet:
        print(summary_line(tally, plan, inputs=inputs, run=run, overlays=overlays,
                           dicom_out=dicom_out, warnings=warnings.count,
                           variant=f"model {engine.spec.model_version}, "
                                   f"{engine.variant.precision}"), file=sys.stderr)
    _list([(r.source, r.error) for r in tally.failures], "see the error column")
    missing = [p for w in (overlays, dicom_out) if w for p in w.problems]
    if not args.log:
        _list(missing, "--log FILE keeps them all")
    return ((EXIT_INPUT_FAILED if tally.failures else EXIT_OK)
            + (EXIT_UNDELIVERED if missing else EXIT_OK))


def _list(problems, rest, shown=20):
    """The first ``shown`` of ``(input, reason)`` on stderr, each on its own line."""
    for source, why in problems[:shown]:
        print(f"  {source}: {why}", file=sys.stderr)
    if len(problems) > shown:
        print(f"  ... and {len(problems) - shown} more ({rest})", file=sys.stderr)


def pipe_closed():
    """Standard output was closed by its reader (``| head``): stop quietly, as other tools do;
    what Python would flush into the closed pipe at exit goes nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_PIPE_CLOSED


def add_parser(subparsers):
    from ..heatmap import OVERLAY_LONG_SIDE
    c = subparsers.add_parser("classify", help="classify image files and folders",
                              description=f"Folders contribute files ending in "
                                          f"{', '.join(IMAGE_EXTENSIONS)} (any case) and other "
                                          f"files whose content is an image or DICOM; files "
                                          f"named explicitly are always read. A PATH may be a "
                                          f"URI that pyarrow reads (s3://, gs://, file://; "
                                          f"pyarrow reads those).")
    g_in = c.add_argument_group("inputs")
    g_out = c.add_argument_group("rows (output)")
    g_score = c.add_argument_group("scoring")
    g_ray = c.add_argument_group("engine (Ray Data)")
    g_side = c.add_argument_group("side outputs")
    g_web = c.add_argument_group("DICOMweb")
    g_scope = c.add_argument_group("scope gate")
    g_log = c.add_argument_group("logging")
    g_in.add_argument("paths", nargs="+", metavar="PATH")
    g_in.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders")
    g_out.add_argument("-o", "--output", help="write results here, a path or a URI such as "
                                          "s3://bucket/run1.parquet (default: stdout)")
    g_out.add_argument("-f", "--format", choices=FORMATS,
                   help="output format (default: jsonl for a .jsonl/.json/.ndjson --output, "
                        "parquet for .parquet, else csv)")
    g_out.add_argument("--resume", action="store_true",
                   help="skip inputs already in --output and append the rest (format and "
                        "columns are the file's own; a row cut by an interruption is redone)")
    g_out.add_argument("--retry-failed", action="store_true",
                   help="with --resume: score again the inputs whose row holds an error "
                        "(their old rows are replaced)")
    g_out.add_argument("--overwrite", action="store_true",
                   help="replace an existing --output and --report")
    g_score.add_argument("--model", help="ONNX model exported by the trainer (default: bundled)")
    g_score.add_argument("--providers", help="comma-separated ONNX Runtime providers, e.g. "
                                       "CUDAExecutionProvider,CPUExecutionProvider")
    g_score.add_argument("--batch-size", type=whole,
                   help=f"images per inference call (default: {CPU_BATCH_SIZE} on the CPU, "
                        f"{DEFAULT_BATCH_SIZE} on a GPU)")
    g_score.add_argument("--threads", type=whole, help="ONNX Runtime intra-op threads per inference "
                                               "call (default: 1 on the CPU)")
    g_score.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                   help="which variant of the model runs: auto (float16 on CUDA, int8 on a CPU "
                        "with int8 dot products, where the variants exist; else float32) or "
                        "that one (xray-infer info says which auto picks here) (default %(default)s)")
    g_score.add_argument("--decode", choices=DECODE_MODES, default="reduced",
                   help="reduced: a JPEG much larger than the model's input decodes at a "
                        "reduced size (faster; see docs/benchmarks.md for its parity); full: "
                        "every image at full size (default %(default)s)")
    g_score.add_argument("--max-value", type=max_value, metavar="N",
                   help="the maximum of 16-bit PNG and TIFF inputs that declare no bit depth of "
                        "their own, e.g. 4095 for 12-bit values (default: inferred as DICOM's "
                        "BitsStored would; docs/inputs.md)")
    g_score.add_argument("--workers", type=whole,
                   help="worker threads (default: CPUs; on the CPU each decodes and scores "
                        "batches of its own); with --engine ray, the "
                        "number of Ray workers (default: one per GPU share, else per CPU)")
    g_ray.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: in this process; ray: on Ray Data workers, this machine's or "
                        "a cluster's (--address), same rows (needs the ray extra) (default %(default)s)")
    g_ray.add_argument("--address", help="with --engine ray: the cluster, HOST:PORT, "
                                     "ray://HOST:PORT or auto (default: a local Ray)")
    g_ray.add_argument("--gpus-per-worker", type=gpu_share,
                   help="with --engine ray: GPUs each worker holds (fractions share a GPU)")
    g_ray.add_argument("--cpus-per-worker", type=cpu_share,
                   help="with --engine ray: CPUs (decode threads) per worker (default: the "
                        "cluster's CPUs shared among the workers)")
    add_audit_options(c)  # its own group
    g_side.add_argument("--heatmaps", metavar="DIR",
                   help="write one PNG per classified input here: the scan with the predicted "
                        "class's activation map over it, label and probabilities")
    g_side.add_argument("--heatmap-size", type=int, metavar="PIXELS", default=OVERLAY_LONG_SIDE,
                   help="longest side of an overlay PNG; larger scans are shrunk to it, 0 keeps "
                        "the scan's full size (default %(default)s)")
    g_side.add_argument("--dicom-out", metavar="DIR|URL", type=dicomweb_options.folder_or_url,
                   help="for every classified DICOM input, a Structured Report (TID 1500) and a "
                        "Secondary Capture of its heatmap: files in this folder, or stored by "
                        "STOW-RS at this DICOMweb base URL (http:// or https://; needs the "
                        "dicomweb extra)")
    g_web.add_argument("--query", type=dicomweb_options.query, metavar="KEY=VALUE[&...]",
                   help="with a DICOMweb base URL as input: score every instance of the "
                        "studies this QIDO-RS search finds, e.g. ModalitiesInStudy=DX")
    dicomweb_options.add_options(g_web, "dicomweb-", "the DICOMweb server(s)")
    g_scope.add_argument("--scope", choices=("on", "off"), default="on",
                   help="on: no label for inputs the model was not made for (other body parts, "
                        "views, modalities, ages; images unlike its training radiographs; films "
                        "that look like an adult's), "
                        "status out_of_scope; off: label every decodable radiograph (research "
                        "on other populations; recorded in each row) (default %(default)s)")
    g_scope.add_argument("--ages", type=ages, metavar="LOW-HIGH",
                   help="with --scope on: accept DICOM patients of these ages in years "
                        "(default: the model's accepted range, its training range); a range "
                        "reaching 18 also turns the adult head off")
    g_side.add_argument("--report", metavar="HTML",
                   help="also write a results page here: one self-contained HTML file (its "
                        "thumbnails in HTML_files/ beside it) with a row per input of this run, "
                        "filters, sorting and a summary")
    g_log.add_argument("--log", metavar="FILE",
                   help="write library warnings and per-input failures here")
    g_log.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")
    c.set_defaults(fn=cmd_classify)
