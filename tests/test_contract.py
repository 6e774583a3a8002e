"""The model contract (spec.py) and opening models (model.py): every rejection, the SHA check,
the signature check, and what the light modules import."""
import json
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import xray_infer
from xray_infer import Classifier, ModelError, ProviderError
from xray_infer import model as model_module
from xray_infer import providers
from xray_infer.errors import ProviderWarning
from trainer.classes import CLASS_NAMES
from xray_infer.spec import METADATA_KEY, ModelSpec

GOOD = {"class_names": list(CLASS_NAMES), "input_size": 64, "mean": 0.5, "std": 0.25,
        "resize": "area-stretch", "schema_version": 1}


def meta(**changes):
    raw = {**GOOD, **changes}
    return {METADATA_KEY: json.dumps({k: v for k, v in raw.items() if v is not ...})}


@pytest.mark.parametrize("metadata,reason", [
    ({}, "not an xray_infer model"),
    ({METADATA_KEY: "{not json"}, "not valid JSON"),
    ({METADATA_KEY: "[1, 2]"}, "not a JSON object"),
    (meta(std=...), "lacks std"),
    (meta(schema_version=2), "schema 2"),
    (meta(resize="crop"), "resize rule 'crop'"),
    (meta(decision="threshold"), "decision rule"),
    (meta(color="rgb"), "color rule"),
    (meta(class_names=["normal"]), "2 or more distinct"),
    (meta(class_names=["a", "a", "b"]), "2 or more distinct"),
    (meta(class_names=["a", 3]), "2 or more distinct"),
    (meta(class_names="abc"), "2 or more distinct"),
    (meta(input_size=0), "input_size"),
    (meta(input_size=True), "input_size"),
    (meta(input_size="224"), "input_size"),
    (meta(mean="0.5"), "mean must be a finite number"),
    (meta(std=0), "std must be positive"),
    (meta(std=-1.0), "std must be positive"),
])
def test_spec_rejections(metadata, reason):
    with pytest.raises(ModelError, match=reason) as e:
        ModelSpec.from_metadata(metadata, "m.onnx")
    assert "m.onnx" in str(e.value)


def test_spec_round_trip_and_defaults():
    spec = ModelSpec.from_metadata(meta())
    assert spec.decision == "argmax" and spec.color == "luminance"
    assert ModelSpec.from_metadata(spec.to_metadata()) == spec
    assert spec.class_names[spec.decide([0.1, 0.7, 0.2])] == "bacterial"


def test_spec_nan_std_is_rejected():
    raw = json.dumps({**GOOD, "std": float("nan")})  # json writes NaN, which loads back
    with pytest.raises(ModelError, match="std must be a finite number"):
        ModelSpec.from_metadata({METADATA_KEY: raw})


@pytest.mark.parametrize("module,heavy", [
    ("xray_infer.spec", ("xray_infer._preprocess", "onnxruntime", "cv2")),
    ("xray_infer.cli", ("onnxruntime", "cv2", "xray_infer._preprocess")),
    ("xray_infer", ("onnxruntime", "cv2", "xray_infer._preprocess")),
])
def test_light_modules_import_nothing_heavy(module, heavy):
    code = f"import sys, {module}; print([m for m in {heavy!r} if m in sys.modules])"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "[]", (p.stdout, p.stderr)


def save_model(path, graph, spec_meta):
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for k, v in spec_meta.items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def log_mean_model(size=64, input_name="image", output_name="logits"):
    """A real graph: logits = log(mean of the image) * [1, 2, 3]. A dark image (negative
    normalised mean) gives NaN logits, a bright one finite logits."""
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 1, size, size])
    y = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", 3])
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 3], [1.0, 2.0, 3.0])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1])
    nodes = [helper.make_node("ReduceMean", [input_name], ["m"], axes=[1, 2, 3], keepdims=1),
             helper.make_node("Reshape", ["m", "shape"], ["m2"]),
             helper.make_node("Log", ["m2"], ["l"]),
             helper.make_node("MatMul", ["l", "w"], [output_name])]
    return helper.make_graph(nodes, "log_mean", [x], [y], initializer=[w, shape])


def test_non_finite_logits_are_an_error_row_not_a_label(tmp_path):
    path = save_model(tmp_path / "m.onnx", log_mean_model(), meta())
    clf = Classifier(path, providers=["CPUExecutionProvider"], scope=False)  # no gate in it
    dark, bright = np.full((100, 100), 10, np.uint8), np.full((100, 100), 250, np.uint8)
    results = clf.classify([dark, bright, dark])
    assert [r.ok for r in results] == [False, True, False]
    assert "non-finite" in results[0].error and results[0].label is None
    assert all(np.isfinite(list(results[1].probabilities.values())))


@pytest.mark.parametrize("graph,spec_meta,reason", [
    (log_mean_model(size=32), meta(), "input shape"),
    (log_mean_model(output_name="scores"), meta(), "do not match the metadata"),
    (log_mean_model(input_name="x"), meta(), "do not match the metadata"),
    (log_mean_model(), meta(class_names=["a", "b"]), "2 classes"),
])
def test_signature_must_match_the_spec(tmp_path, graph, spec_meta, reason):
    path = save_model(tmp_path / "m.onnx", graph, spec_meta)
    with pytest.raises(ModelError, match=reason):
        Classifier(path, scope=False)


@pytest.fixture()
def bundled_copy(tmp_path, monkeypatch):
    """The bundled model and its SHA file copied; the copy is treated as the bundled model."""
    onnx_path = tmp_path / "default.onnx"
    onnx_path.write_bytes(xray_infer.DEFAULT_MODEL.read_bytes())
    sidecar = tmp_path / "default.onnx.sha256"
    sidecar.write_text(model_module.sidecar_path(xray_infer.DEFAULT_MODEL).read_text())
    monkeypatch.setattr(model_module, "DEFAULT_MODEL", onnx_path)
    return onnx_path, sidecar


def test_bundled_model_is_always_checked(bundled_copy):
    onnx_path, sidecar = bundled_copy
    model_module.load_model()  # the intact copy loads
    sidecar.unlink()
    with pytest.raises(ModelError, match="missing"):
        model_module.load_model()


@pytest.mark.parametrize("content", ["", "\n", "not-a-digest  default.onnx\n", "abc123\n"])
def test_malformed_sha_file_is_a_model_error(bundled_copy, content):
    bundled_copy[1].write_text(content)
    with pytest.raises(ModelError, match="not a SHA-256 file"):
        model_module.load_model()


def test_other_models_are_checked_where_a_sha_file_exists(tmp_path):
    path = save_model(tmp_path / "m.onnx", log_mean_model(), meta())
    Classifier(path, scope=False)  # no sidecar: loads
    (tmp_path / "m.onnx.sha256").write_text("0" * 64 + "  m.onnx\n")
    with pytest.raises(ModelError, match="does not match"):
        Classifier(path, scope=False)


def test_provider_errors_and_warnings():
    with pytest.raises(ProviderError, match="CPUExecutionProvider"):
        providers.resolve(["NoSuchExecutionProvider"])
    with pytest.raises(ProviderError, match="at least one"):
        providers.resolve([])
    with pytest.warns(ProviderWarning, match="CUDAExecutionProvider was requested"):
        providers.check_active(["CUDAExecutionProvider", "CPUExecutionProvider"],
                               ["CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        providers.check_active(["CPUExecutionProvider"], ["CPUExecutionProvider"])


def test_float16_variant_has_its_parity_record_and_agrees():
    from xray_infer.model import variant_path
    assert variant_path(xray_infer.DEFAULT_MODEL, "float16").exists()
    session, spec = model_module.load_model(providers=["CPUExecutionProvider"],
                                            precision="float16")
    parity = spec.metrics["fp16_parity"]["test"]
    assert spec.precision == "float16" and parity["n"] == 624
    assert parity["agreement"] >= 0.995
    assert parity["accuracy_float32"] - parity["accuracy_float16"] <= 0.005
    # auto picks float16 only on CUDA: on the CPU it is the int8 variant or the float32 model
    assert model_module.load_model(providers=["CPUExecutionProvider"])[1].precision in (
        "int8", "float32")
    samples = sorted((xray_infer.DEFAULT_MODEL.parent.parent / "samples").glob("*.jpeg"))
    half = Classifier(precision="float16", providers=["CPUExecutionProvider"])
    full = Classifier(precision="float32", providers=["CPUExecutionProvider"])
    for a, b in zip(half.classify(samples), full.classify(samples)):
        assert a.label == b.label
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) < 0.02


def test_float16_needs_a_variant(tmp_path):
    path = save_model(tmp_path / "m.onnx", log_mean_model(), meta())
    with pytest.raises(ModelError, match="no float16 variant"):
        Classifier(path, precision="float16")
    with pytest.raises(ValueError, match="precision"):
        Classifier(path, precision="int4")
