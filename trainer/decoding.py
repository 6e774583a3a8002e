"""Parity of the reduced-size decoding rule (``xray_infer.preprocess.jpeg_scale``): the same
scans classified with JPEGs decoded at full size and at the size the rule allows."""
import collections

import numpy as np

from xray_infer import Classifier
from xray_infer.decode import jpeg_frame
from xray_infer.preprocess import jpeg_scale

#: Labels that must agree between the two decodings, or the rule is not shipped.
MIN_DECODING_AGREEMENT = 0.995


def decoding_parity(paths, model=None, precision="float32"):
    """A record of full-size against reduced-size decoding of the JPEGs at ``paths``: how many
    were reduced by each denominator, label and scope-decision agreement, the median and
    largest absolute probability difference (scope off for the probabilities: every scan gets
    both). ``passed``: agreement at least ``MIN_DECODING_AGREEMENT``."""
    full = Classifier(model, precision=precision, scope=False, decode="full")
    reduced = Classifier(model, precision=precision, scope=False, decode="reduced")
    a, b = full.classify(paths), reduced.classify(paths)
    gated_full = Classifier(model, precision=precision, decode="full").classify(paths)
    gated_reduced = Classifier(model, precision=precision, decode="reduced").classify(paths)
    scales = collections.Counter()
    for p in paths:
        with open(p, "rb") as f:
            frame = jpeg_frame(f.read())
        scales[jpeg_scale(frame[0], frame[1], full.spec.input_size) if frame else 1] += 1
    ok = [(x, y) for x, y in zip(a, b) if x.ok and y.ok]
    diff = [max(abs(x.probabilities[k] - y.probabilities[k]) for k in full.class_names)
            for x, y in ok]
    agreement = float(np.mean([x.label == y.label for x, y in ok])) if ok else 0.0
    return {"n": len(paths), "classified_both": len(ok), "precision": full.spec.precision,
            "scaled_by": {str(k): v for k, v in sorted(scales.items())},
            "agreement": agreement,
            "scope_agreement": float(np.mean([x.status == y.status
                                              for x, y in zip(gated_full, gated_reduced)])),
            "median_abs_probability_diff": float(np.median(diff)) if diff else None,
            "max_abs_probability_diff": float(np.max(diff)) if diff else None,
            "passed": agreement >= MIN_DECODING_AGREEMENT}


def record_parity(model_path, paths):
    """Measure ``decoding_parity`` with the float32 model and each CPU variant (int8) beside it,
    and write the records into the metadata of every variant (``metrics["reduced_decoding"]``,
    read by ``xray-infer info``). Returns the records by precision."""
    from dataclasses import replace

    import onnx

    from xray_infer.model import load_model, variant_path
    from xray_infer.spec import PRECISIONS

    from .model_files import write_model
    present = [p for p in PRECISIONS if variant_path(model_path, p).exists()]
    records = {p: decoding_parity(paths, model_path, precision=p)
               for p in present if p != "float16"}  # float16 runs on CUDA, not measured here
    for p in present:
        path = variant_path(model_path, p)
        spec = load_model(model_path, providers=["CPUExecutionProvider"], precision=p)[1]
        metrics = dict(spec.metrics, reduced_decoding=records)
        write_model(onnx.load(str(path)), replace(spec, metrics=metrics), path)
    return records
