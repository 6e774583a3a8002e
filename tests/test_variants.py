"""The CPU fast path: the int8 variant, how ``precision="auto"`` picks it, reduced-size JPEG
decoding and the session's threading."""
import io
import json
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

import xray_infer
from xray_infer import Classifier, read_image
from xray_infer.cpu import int8_dot_product
from xray_infer.errors import ModelError
from xray_infer.model import choose_variant, load_model, variant_path
from xray_infer.preprocess import JPEG_MIN_RATIO, jpeg_scale

from helpers import SAMPLES, run_cli

# the gates the export sets, imported: a test never restates a threshold
decoding = pytest.importorskip("trainer.decoding")
quantize = pytest.importorskip("trainer.quantize")
MIN_DECODING_AGREEMENT = decoding.MIN_DECODING_AGREEMENT
MIN_INT8_AGREEMENT, MAX_F1_DROP = quantize.MIN_INT8_AGREEMENT, quantize.MAX_F1_DROP

CPU = ["CPUExecutionProvider"]


def test_int8_variant_is_gated_on_validation_and_reports_test():
    path = variant_path(xray_infer.DEFAULT_MODEL, "int8")
    assert path.exists()
    _, spec = load_model(providers=CPU, precision="int8")
    assert spec.precision == "int8"
    record = spec.metrics["int8_parity"]
    assert record["val"]["n"] == 788 and record["test"]["n"] == 624
    assert record["val"]["agreement"] >= MIN_INT8_AGREEMENT
    assert record["val"]["scope_agreement"] >= MIN_INT8_AGREEMENT
    assert record["val"]["macro_f1_float32"] - record["val"]["macro_f1_int8"] <= MAX_F1_DROP
    # the test split is measured and recorded, never a gate (3.0.0: 97.9% agreement, reported
    # in docs/model.md as a missed target)
    assert "test reported only" in record["gates"]
    assert 0.9 <= record["test"]["agreement"] <= 1 and 0.9 <= record["test"]["scope_agreement"] <= 1
    assert record["leading_float"] >= 1 and len(record["rejected"]) == record["leading_float"] - 1
    # the variant keeps the whole contract: the same classes, gate and heatmap output
    _, spec32 = load_model(providers=CPU, precision="float32")
    assert spec.scope == spec32.scope and spec.heatmap_output == spec32.heatmap_output


def test_int8_agrees_with_float32_and_keeps_heatmaps_and_the_gate():
    fast = Classifier(precision="int8", providers=CPU, heatmaps=True)
    exact = Classifier(precision="float32", providers=CPU, heatmaps=True)
    assert fast.variant.path.name == "default.int8.onnx"
    pairs = list(zip(fast.classify(SAMPLES), exact.classify(SAMPLES)))
    for a, b in pairs:
        assert a.status == b.status == "classified"
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) < 0.15
        assert a.heatmap.shape == b.heatmap.shape
    # Two samples lie near the bacterial/viral boundary. With int8 dot products (what the
    # variant was gated on) at most one of them tips over; ONNX Runtime's int8 kernels for CPUs
    # without them (why `auto` picks float32 there) may tip both, but never a clear case.
    if int8_dot_product()[0]:
        assert sum(a.label == b.label for a, b in pairs) >= len(pairs) - 1
    for a, b in pairs:
        top, second = sorted(b.probabilities.values())[::-1][:2]
        assert a.label == b.label or top - second < 0.1, (a, b)
    noise = np.random.default_rng(0).integers(0, 256, (400, 400), dtype=np.uint8)
    assert fast.classify([noise])[0].status == "out_of_scope"


def test_auto_picks_by_provider_and_cpu_and_says_why(tmp_path):
    model = xray_infer.DEFAULT_MODEL
    fast, why = int8_dot_product()
    v = choose_variant(model, CPU)
    assert v.precision == ("int8" if fast else "float32") and why in v.reason
    gpu = choose_variant(model, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert (gpu.precision, gpu.path) == ("float16", variant_path(model, "float16"))
    assert choose_variant(model, CPU, "float32") == (model, "float32", "requested")
    # a model without variants beside it runs as itself, and says so
    alone = tmp_path / "m.onnx"
    shutil.copy(model, alone)
    v = choose_variant(alone, CPU)
    assert (v.path, v.precision) == (alone, "float32") and "no int8 variant" in v.reason
    with pytest.raises(ModelError, match="no int8 variant"):
        choose_variant(alone, CPU, "int8")
    with pytest.raises(ValueError, match="precision"):
        choose_variant(alone, CPU, "int4")


def test_a_variant_whose_metadata_disagrees_with_its_name_is_refused(tmp_path):
    alone = tmp_path / "m.onnx"
    shutil.copy(xray_infer.DEFAULT_MODEL, alone)
    shutil.copy(xray_infer.DEFAULT_MODEL, variant_path(alone, "int8"))  # float32 inside
    with pytest.raises(ModelError, match="named as the int8 variant, but its metadata says "
                                         "float32"):
        load_model(alone, providers=CPU, precision="int8")


def test_cpu_detection_matches_the_kernel_flags():
    found, why = int8_dot_product()
    try:
        flags = next(line for line in open("/proc/cpuinfo")
                     if line.startswith(("flags", "Features"))).split(":", 1)[1].split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags here")
    expected = bool({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"} & set(flags))
    if expected:  # NumPy's detection may add what the flags lack, never take it away
        assert found
    assert isinstance(why, str) and why


def test_cpu_sessions_do_not_spin_next_to_the_decoding_threads():
    clf = Classifier(providers=CPU)
    options = clf.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    session, _ = load_model(providers=CPU)  # a bare session keeps ONNX Runtime's default
    with pytest.raises(RuntimeError, match="does not have configuration"):
        session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")


# -- reduced-size decoding -------------------------------------------------------------------

@pytest.mark.parametrize("width,height,expected", [
    (1000, 1000, 2),     # 1/2: 500 >= 320; 1/4: 250 < 320
    (2600, 2600, 8),     # 1/8: 325
    (2000, 1300, 4),     # 1/4: 500x325
    (639, 2000, 2),      # 1/2: 320x1000, libjpeg rounds the short side up
    (638, 2000, 1),
    (300, 300, 1),
])
def test_jpeg_scale_rule(width, height, expected):
    assert JPEG_MIN_RATIO == 2
    assert jpeg_scale(width, height, 160) == expected
    assert jpeg_scale(width, height, None) == 1


def _jpeg(path, pixels, **kw):
    Image.fromarray(pixels).save(path, "JPEG", quality=92, **kw)
    return path


def _scan(h, w):
    y, x = np.mgrid[0:h, 0:w]
    return (128 + 60 * np.sin(x / 37.0) * np.cos(y / 23.0)).astype(np.uint8)


def test_large_jpeg_decodes_reduced_and_keeps_its_own_size(tmp_path):
    path = _jpeg(tmp_path / "big.jpeg", _scan(1100, 1400))
    full, reduced = read_image(path), read_image(path, 160)
    assert full.pixels.shape == (1100, 1400) and full.size is None
    assert reduced.pixels.shape == (550, 700) and reduced.shape == (1100, 1400)
    # the reduced decode is the full one averaged, up to JPEG's own rounding
    down = cv2.resize(full.pixels, (700, 550), interpolation=cv2.INTER_AREA)
    assert np.abs(down.astype(int) - reduced.pixels).mean() < 2
    # heatmaps come back at the scan's own size either way
    clf = Classifier(providers=CPU, heatmaps=True, scope=False)
    assert clf.classify([str(path)])[0].heatmap.shape == (1100, 1400)


def test_exif_rotated_jpeg_reports_its_rotated_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = _jpeg(tmp_path / "rot.jpeg", _scan(1100, 1500), exif=exif.tobytes())
    full, reduced = read_image(path), read_image(path, 160)
    assert full.pixels.shape == (1500, 1100)
    assert reduced.shape == full.pixels.shape
    assert reduced.pixels.shape == (750, 550)


def test_jpegs_libjpeg_cannot_scale_to_grey_decode_at_full_size(tmp_path):
    cmyk = Image.fromarray(_scan(1000, 1000)).convert("CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, "JPEG")
    path = tmp_path / "cmyk.jpeg"
    path.write_bytes(buf.getvalue())
    d = read_image(path, 160)
    assert d.size is None and d.pixels.shape == (1000, 1000)


def test_reduced_decoding_record_passes_and_full_decoding_stays_available():
    for precision in ("float32", "int8"):
        _, spec = load_model(providers=CPU, precision=precision)
        record = spec.metrics["reduced_decoding"]
        assert record["float32"]["n"] == 240 and record["float32"]["passed"]
        assert record["int8"]["agreement"] >= MIN_DECODING_AGREEMENT
    with pytest.raises(ValueError, match="decode"):
        Classifier(providers=CPU, decode="half")


def test_reduced_and_full_decoding_agree_on_real_full_resolution_scans(data):
    scans = sorted(str(p) for p in (data / "fullres").glob("*/*.jpeg"))[::10]
    full = Classifier(providers=CPU, precision="float32", decode="full").classify(scans)
    reduced = Classifier(providers=CPU, precision="float32").classify(scans)
    assert [r.label for r in full] == [r.label for r in reduced]
    assert [r.status for r in full] == [r.status for r in reduced]


def test_cli_precision_decode_and_info(tmp_path):
    out = tmp_path / "r.csv"
    r = run_cli("classify", *SAMPLES[:2], "--precision", "float32", "--decode", "full",
                "-o", out, "-q")
    assert r.returncode == 0, r.stderr
    assert len(out.read_text().splitlines()) == 3
    r = run_cli("info", "--json")
    info = json.loads(r.stdout)
    assert info["variant"]["precision"] in ("int8", "float32")
    assert set(info["variants"]) == {"float32", "float16", "int8"}
    assert info["reduced_decoding"]["parity"]["float32"]["passed"]
    r = run_cli("info", "--precision", "float32")
    assert "variant        float32 (default.onnx) on the CPU: requested" in r.stdout
    r = run_cli("classify", *SAMPLES[:1], "--precision", "int4")
    assert r.returncode == 2 and "invalid choice" in r.stderr
