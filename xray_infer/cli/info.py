"""``xray-infer info``: the model's metadata, the gate, the providers and the kernel."""
import json
from pathlib import Path

from ..errors import XrayInferError
from ..spec import PRECISIONS
from ..cpu import int8_dot_product
from ._common import EXIT_OK, EXIT_USAGE, fail


def cmd_info(args):
    import onnxruntime as ort

    from .. import _preprocess
    from ..classifier import Classifier
    from ..model import variant_path
    from ..preprocess import JPEG_MIN_RATIO, JPEG_SCALES
    try:
        clf = Classifier(args.model, providers=["CPUExecutionProvider"], scope=False,
                         precision=args.precision)
    except XrayInferError as e:
        return fail(e, EXIT_USAGE)
    v = clf.variant
    info = {"model": str(clf.model_path), "spec": clf.spec.to_dict(),
            "variant": {"path": str(v.path), "precision": v.precision, "reason": v.reason},
            "variants": {p: str(variant_path(clf.model_path, p)) for p in PRECISIONS
                         if variant_path(clf.model_path, p).exists()},
            "reduced_decoding": {"rule": "8-bit JPEGs decode at "
                                         + ", ".join(f"1/{d}" for d in JPEG_SCALES[::-1])
                                         + f" size while both sides stay >= {JPEG_MIN_RATIO}x "
                                           f"the model's input",
                                 "parity": clf.spec.metrics.get("reduced_decoding")},
            "pipeline": {"workers": clf.workers, "batch_size": clf.batch_size,
                         "threads_per_call": clf.threads},
            "onnxruntime": ort.__version__, "available_providers": ort.get_available_providers(),
            "kernel": {"module": _preprocess.__file__, "openmp": _preprocess.OPENMP}}
    if args.json:
        print(json.dumps(info, indent=1, default=list))
        return EXIT_OK
    s = clf.spec
    print(f"model          {info['model']}")
    print(f"version        {s.model_version}")
    print(f"variant        {v.precision} ({v.path.name}) on the CPU: {v.reason}; present: "
          f"{', '.join(info['variants'])}")
    q = s.metrics.get("int8_parity")
    if q:
        print(f"int8 parity    agreement with float32 {q['val']['agreement']:.4f} val, "
              f"{q['test']['agreement']:.4f} test; scope decisions "
              f"{q['val']['scope_agreement']:.4f} val; test accuracy "
              f"{q['test']['accuracy_int8']:.4f} (float32 "
              f"{q['test']['accuracy_float32']:.4f})")
        print(f"               {measured_where(q)}")
    d = info["reduced_decoding"]
    print(f"decoding       {d['rule']}")
    for precision, r in (d["parity"] or {}).items():
        print(f"               {precision}: labels agree with full-size decoding on "
              f"{r['agreement']:.4f} of {r['n']} full-resolution scans, scope decisions "
              f"{r['scope_agreement']:.4f}, probability difference median "
              f"{r['median_abs_probability_diff']:.4f}, max {r['max_abs_probability_diff']:.4f}")
    print(f"classes        {', '.join(s.class_names)}")
    print(f"input          1x{s.input_size}x{s.input_size} grayscale, resize {s.resize}, "
          f"(x/maxval - {s.mean}) / {s.std}")
    for split in ("val", "test"):
        m = s.metrics.get(split)
        if m:
            print(f"{split + ' metrics':<15}accuracy {m['accuracy']:.4f}, macro-F1 "
                  f"{m['macro_f1']:.4f}, normal-vs-pneumonia accuracy {m['binary_accuracy']:.4f}, "
                  f"AUC {m['binary_auc']:.4f} (n={m['n']})")
    soup, student = s.provenance.get("soup"), s.provenance.get("student")
    if isinstance(soup, dict):
        print(f"made as        a uniform weight average of {len(soup['members'])} fine-tunes of "
              f"recipe {soup['recipe']} (seeds {', '.join(map(str, soup['seeds']))}), one "
              f"linear probe their start")
    elif isinstance(student, dict):
        print(f"made as        a student distilled from the mean output of "
              f"{len(student['teachers'])} fine-tunes of recipe {student['recipe']}, their "
              f"linear probe its start")
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
    if s.adult_output:
        h, dev = s.adult_head, s.adult_head.get("development", {})
        held = dev.get("held_out_adults_refused", {}).get("all", {})
        figures = (f"; refused {held['share']:.0%} of {held['n']} adult films held out of its fit"
                   if held.get("n") else "")
        print(f"adult head     threshold {h['threshold']:.2f} ({h['threshold_rule']}{figures}; "
              f"decides where a DICOM header states no age)")
    else:
        print("adult head     none (adults' films are refused only by a DICOM header's age)")
    print(f"pipeline       on the CPU {clf.workers} worker thread(s), each decoding and scoring "
          f"batches of {clf.batch_size} with {clf.threads} ONNX Runtime thread(s) per call "
          f"(classify: --workers, --batch-size, --threads)")
    print(f"onnxruntime    {info['onnxruntime']}; providers: "
          f"{', '.join(info['available_providers'])}")
    print(f"kernel         {'OpenMP' if _preprocess.OPENMP else 'serial'} build, "
          f"{Path(_preprocess.__file__).name}")
    return EXIT_OK


def measured_where(parity):
    """Where the int8 figures were measured: int8 arithmetic differs between CPUs with and
    without int8 dot products, so they hold for that kind of CPU."""
    here = "; this CPU: " + int8_dot_product()[1]
    if parity.get("measured_on"):
        return f"int8 figures measured at export where {parity['measured_on']}{here}"
    return (f"int8 figures measured at export on a CPU not recorded; they differ by about a "
            f"point of accuracy "
            f"between CPUs with and without int8 dot products (python -m benchmarks accuracy "
            f"measures them here){here}")


def add_parser(subparsers):
    i = subparsers.add_parser("info", help="show the model's metadata and the available providers")
    i.add_argument("--model")
    i.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                   help="describe this variant (default: the one auto picks on this CPU)")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(fn=cmd_info)
