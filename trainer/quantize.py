"""The int8 variant of an exported model: ONNX Runtime's static quantisation in QDQ form.

Weights are int8 per output channel, activations uint8 with ranges calibrated (MinMax) on
training images only. Kept in float32 (``float_nodes``): the first convolutions, and the
features' last convolution with everything after it (the head, the class maps and the scope
gate's squared distances, which span thousands). The variant is written only when it agrees
with the float32 model on the validation split (``MIN_INT8_AGREEMENT`` of the labels and of the
scope gate's decisions, macro-F1 at most ``MAX_F1_DROP`` lower); the test figures go into its
record, never into that decision. The fewest leading convolutions in float32 that pass the
gates are kept so (one, then two, ... up to ``MAX_LEADING_FLOAT``): validation decides how much
of the network stays float32, nothing else.
"""
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from xray_infer.model import load_model, variant_path

from . import scope
from .metrics import softmax, summarize
from .model_files import write_model

#: Training images the activation ranges are calibrated on (a fixed random draw).
CALIBRATION_IMAGES = 512
CALIBRATION_SEED = 0
#: The validation gates.
MIN_INT8_AGREEMENT, MAX_F1_DROP = 0.99, 0.01
#: At most this many leading convolutions are left in float32 before giving up.
MAX_LEADING_FLOAT = 8


def _outputs(session, spec, x, batch_size=128):
    """(logits, scope decisions) of a session over a preprocessed array: a decision is True
    where every image gate of the model (distance, adult head) admits the image."""
    names = [spec.output_name, spec.scope_output] + ([spec.adult_output] if spec.adult_output
                                                     else [])
    runs = [session.run(names, {spec.input_name: np.ascontiguousarray(x[i:i + batch_size])})
            for i in range(0, len(x), batch_size)]
    out = [np.concatenate([r[k] for r in runs]) for k in range(len(names))]
    admitted = out[1] <= spec.scope["threshold"]
    if spec.adult_output:
        admitted &= out[2] <= spec.adult_head["threshold"]
    return out[0], out[1], admitted


def calibration_set(train):
    """The training images the ranges are calibrated on: float32 (N, 1, S, S)."""
    x = train[0]
    rng = np.random.default_rng(CALIBRATION_SEED)
    take = np.sort(rng.choice(len(x), min(CALIBRATION_IMAGES, len(x)), replace=False))
    return np.ascontiguousarray(x[take])


def float_nodes(proto, leading=1):
    """Names of the nodes left in float32: the first ``leading`` convolutions (the first reads
    the image) and the last convolution of the features with every node downstream of it.

    Quantising the last ones as well cost 1-1.5 points of validation agreement with the float32
    model; the features the head and the scope gate read are where int8 error shows most. For
    3.0.0, trained on re-encoded and quantised images, the early convolutions mattered too."""
    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    node = producer[scope.feature_tensor(proto)]
    while node.op_type != "Conv":  # back through pooling, flattening and the activation
        node = producer[node.input[0]]
    keep, frontier = {node.name}, set(node.output)
    for n in graph.node:  # topologically sorted, so one pass finds everything downstream
        if frontier.intersection(n.input):
            keep.add(n.name)
            frontier.update(n.output)
    first = [n.name for n in graph.node if n.op_type == "Conv"][:leading]
    return sorted(keep | set(first))


def quantize(fp32_path, spec, calibration, leading=1):
    """The int8 QDQ graph of the model at ``fp32_path`` with ``spec`` (an onnx.ModelProto, no
    metadata), its first ``leading`` convolutions in float32."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // 32)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {spec.input_name: np.ascontiguousarray(batch)}

    with tempfile.TemporaryDirectory() as tmp:
        pre, out = os.path.join(tmp, "pre.onnx"), os.path.join(tmp, "int8.onnx")
        # Shape inference and graph optimisation first, as ONNX Runtime recommends: folded
        # constants and fused operators give the quantiser whole convolutions to work on.
        quant_pre_process(str(fp32_path), pre, skip_symbolic_shape=True)
        quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=float_nodes(onnx.load(pre), leading))
        return onnx.load(out)


def parity(spec32, sess32, sess8, data):
    """{split: agreement of labels and scope decisions (every image gate), accuracy and macro-F1
    of both} for
    ``data`` = {split: (x, labels)}, and the int8 model's own metrics."""
    record, metrics = {}, {}
    for split, (x, y) in data.items():
        (l32, d32, in32), (l8, d8, in8) = _outputs(sess32, spec32, x), _outputs(sess8, spec32, x)
        p32, p8 = softmax(l32), softmax(l8)
        metrics[split] = summarize(y, p8)
        reference = summarize(y, p32)
        record[split] = {
            "n": int(len(y)),
            "agreement": float((p32.argmax(1) == p8.argmax(1)).mean()),
            "scope_agreement": float((in32 == in8).mean()),
            "accuracy_float32": reference["accuracy"], "accuracy_int8": metrics[split]["accuracy"],
            "macro_f1_float32": reference["macro_f1"], "macro_f1_int8": metrics[split]["macro_f1"],
            "max_abs_probability_diff": float(np.abs(p32 - p8).max()),
            "median_scope_distance_rel_diff": float(np.median(np.abs(d8 - d32) / d32))}
    return record, metrics


def export_int8(fp32_path, data):
    """Write the int8 variant (``variant_path(fp32_path, "int8")``) of an exported model with a
    scope gate; ``data``: {train, val, test} arrays at its input size. Its metadata is the
    float32 model's with ``precision`` int8, its own metrics and ``int8_parity``. Raises (and
    writes nothing) when the validation gates fail. Returns the parity record."""
    import onnxruntime as ort

    fp32_path = Path(fp32_path)
    sess32, spec = load_model(fp32_path, providers=["CPUExecutionProvider"], precision="float32")
    if not spec.scope_output:
        raise ValueError(f"{fp32_path}: quantise a model with its scope gate (python -m trainer "
                         f"scope first), so the gate's decisions can be checked")
    calibration, tried = calibration_set(data["train"]), []
    for leading in range(1, MAX_LEADING_FLOAT + 1):
        proto = quantize(fp32_path, spec, calibration, leading)
        sess8 = ort.InferenceSession(proto.SerializeToString(),
                                     providers=["CPUExecutionProvider"])
        record, own = parity(spec, sess32, sess8, {"val": data["val"]})
        val = record["val"]
        drop = val["macro_f1_float32"] - val["macro_f1_int8"]
        if val["agreement"] >= MIN_INT8_AGREEMENT and val["scope_agreement"] >= MIN_INT8_AGREEMENT \
                and drop <= MAX_F1_DROP:
            break
        tried.append(f"{leading} leading: agreement {val['agreement']:.4f}, scope agreement "
                     f"{val['scope_agreement']:.4f}, macro-F1 drop {drop:.4f}")
    else:
        raise RuntimeError(f"int8 variant not written: no validation gate passed (agreement and "
                           f"scope agreement >= {MIN_INT8_AGREEMENT}, macro-F1 drop <= "
                           f"{MAX_F1_DROP}) with up to {MAX_LEADING_FLOAT} leading convolutions "
                           f"in float32: " + "; ".join(tried))
    # the test split is measured once, for the record, after validation has decided
    test_record, test_own = parity(spec, sess32, sess8, {"test": data["test"]})
    record.update(test_record)
    own.update(test_own)
    record["method"] = (f"ONNX Runtime static QDQ: int8 per-channel weights, uint8 activations, "
                        f"MinMax ranges on {CALIBRATION_IMAGES} training images (seed "
                        f"{CALIBRATION_SEED}); the first {leading} convolution(s), last feature "
                        f"convolution, head, class maps, scope gate and adult head in float32")
    record["leading_float"], record["rejected"] = leading, tried
    # int8 arithmetic differs between CPUs with and without int8 dot products: say which ran
    from xray_infer.cpu import int8_dot_product
    record["measured_on"] = int8_dot_product()[1]
    record["gates"] = (f"validation: agreement and scope agreement >= {MIN_INT8_AGREEMENT}, macro-F1 "
                       f"drop <= {MAX_F1_DROP}; test reported only")
    metrics = dict(spec.metrics, val=own["val"], test=own["test"], int8_parity=record)
    out = variant_path(fp32_path, "int8")
    write_model(proto, replace(spec, precision="int8", metrics=metrics), out)
    load_model(fp32_path, providers=["CPUExecutionProvider"], precision="int8")  # reads back
    return record
