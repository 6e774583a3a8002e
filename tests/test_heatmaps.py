"""Class activation heatmaps from the bundled model, the overlays, and results as DICOM."""
import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

import xray_infer
from helpers import ROOT, SAMPLES
from helpers import run_cli as run
from xray_infer import Classifier, ModelError, load_model
from xray_infer.decode import read_image
from xray_infer.spec import softmax

V1 = ROOT / "benchmarks" / "models" / "v1.0.0.onnx"  # exported before maps were: no such output


@pytest.fixture(scope="module")
def clf():
    return Classifier(providers=["CPUExecutionProvider"], heatmaps=True)


def test_heatmap_has_the_scan_size_and_range(clf):
    wide = cv2.resize(read_image(SAMPLES[0]).pixels, (300, 220))
    results = clf.classify([str(p) for p in SAMPLES] + [wide])
    for r, item in zip(results, [str(p) for p in SAMPLES] + [wide]):
        shape = read_image(item).pixels.shape if isinstance(item, str) else item.shape
        assert r.ok and r.heatmap.shape == shape and r.heatmap.dtype == np.float32
        assert r.heatmap.min() == 0.0 and r.heatmap.max() == 1.0


def test_off_by_default_and_same_probabilities(clf):
    plain = Classifier(providers=["CPUExecutionProvider"]).classify([str(SAMPLES[0])])[0]
    with_maps = clf.classify([str(SAMPLES[0])])[0]
    assert plain.heatmap is None and plain.probabilities == with_maps.probabilities


def test_spatial_mean_of_the_maps_gives_the_probabilities(clf):
    """A single model: each class map's spatial mean is its calibrated logit, so their
    softmax equals the model's probabilities (1e-4)."""
    assert len(clf.spec.metrics["temperatures"]) == 1
    s = clf.spec
    x = np.stack([np.zeros((1, s.input_size, s.input_size), np.float32) + v
                  for v in (-1.0, 0.0, 0.7)])
    log_p, maps = clf.session.run([s.output_name, s.heatmap_output], {s.input_name: x})
    assert np.abs(softmax(maps.mean(axis=(2, 3))) - np.exp(log_p)).max() < 1e-4


def test_model_without_maps_loads_but_refuses_heatmaps():
    session, spec = load_model(V1, providers=["CPUExecutionProvider"])
    assert spec.heatmap_output == ""
    assert Classifier(V1, scope=False).classify([str(SAMPLES[0])])[0].ok
    with pytest.raises(ModelError, match="no scope gate"):
        Classifier(V1)
    with pytest.raises(ModelError, match="no class activation map output"):
        Classifier(V1, heatmaps=True, scope=False)


def test_maps_of_the_trained_model_differ_from_randomised_weights():
    """Model-randomisation sanity check (Adebayo et al. 2018): the same architecture with
    re-initialised weights gives maps unrelated to the trained model's."""
    torch = pytest.importorskip("torch")
    from scipy.stats import spearmanr

    from trainer.export import load_checkpoint, member_outputs
    from trainer.model import build
    model, cfg = load_checkpoint(ROOT / "models" / "default.pt")
    trained = model.members[0]
    torch.manual_seed(0)
    randomised = build(cfg.net, pretrained_weights=False).eval()  # re-initialised weights
    spec = Classifier(providers=["CPUExecutionProvider"]).spec
    from xray_infer.preprocess import preprocess
    x = torch.from_numpy(np.stack([
        preprocess(read_image(p).pixels, size=spec.input_size, mean=spec.mean, std=spec.std)
        for p in SAMPLES])[:, None])
    with torch.no_grad():
        logits, maps = member_outputs(trained, x)
        _, random_maps = member_outputs(randomised, x)
    k = logits.argmax(1)
    corr = [abs(spearmanr(maps[i, k[i]].flatten(), random_maps[i, k[i]].flatten())[0])
            for i in range(len(SAMPLES))]
    assert np.mean(corr) < 0.5, corr
    # ... while the same scan re-encoded (JPEG quality 90) gives the trained model nearly the
    # same map, so the check above is not passing merely because any two maps disagree.
    # (Maps of different scans were the guard until 2.0.0, whose maps shared the lungs' shape,
    # mean 0.62; 3.0.0's share less, 0.34.)
    import cv2
    again = []
    for p in SAMPLES:
        ok, buf = cv2.imencode(".jpg", read_image(p).pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])
        again.append(preprocess(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE), size=spec.input_size,
                                mean=spec.mean, std=spec.std))
    with torch.no_grad():
        _, maps_again = member_outputs(trained, torch.from_numpy(np.stack(again)[:, None]))
    same = [abs(spearmanr(maps[i, k[i]].flatten(), maps_again[i, k[i]].flatten())[0])
            for i in range(len(SAMPLES))]
    assert min(same) > 0.9 > np.mean(corr), (same, corr)


def test_cli_writes_one_overlay_per_classified_input(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for p in SAMPLES[:3]:
        shutil.copy(p, scans / p.name)
    big = cv2.resize(read_image(SAMPLES[3]).pixels, (640, 480))
    cv2.imwrite(str(scans / "big.png"), big)
    (scans / "broken.jpeg").write_bytes(b"\xff\xd8 nothing")
    out = tmp_path / "maps"
    p = run("classify", scans, "--heatmaps", out, "-q")
    assert p.returncode == 1, p.stderr
    pngs = sorted(f.name for f in out.iterdir())
    assert pngs == sorted([f"{q.stem}.png" for q in SAMPLES[:3]] + ["big.png"])
    assert cv2.imread(str(out / "big.png")).shape == (480, 640, 3)
    assert cv2.imread(str(out / f"{SAMPLES[0].stem}.png")).shape[:2] == \
        read_image(SAMPLES[0]).pixels.shape


def _dicom_sources(tmp_path):
    pytest.importorskip("pydicom")
    from dicomfiles import chest_dicoms
    return chest_dicoms(tmp_path / "sources", 3, "XRI-1")


def test_dicom_results_read_back_and_reference_their_source(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    hd = pytest.importorskip("highdicom")
    sources = _dicom_sources(tmp_path)
    jpeg = SAMPLES[4]
    out = tmp_path / "results"
    p = run("classify", *sources, jpeg, "--dicom-out", out, "-f", "jsonl")
    assert p.returncode == 0, p.stderr
    assert "none for 1 non-DICOM input" in p.stderr
    rows = {Path(r["path"]).stem: r for r in map(json.loads, p.stdout.splitlines())}
    from xray_infer.model import model_digest
    variant = xray_infer.Classifier(scope=False).variant
    seen_uids = set()
    for src_path in sources:
        src = pydicom.dcmread(src_path)
        sr = hd.sr.srread(out / f"{src_path.stem}.SR.dcm")
        sc = pydicom.dcmread(out / f"{src_path.stem}.SC.dcm")
        for obj in (sr, sc):
            assert obj.PatientID == src.PatientID and obj.StudyInstanceUID == src.StudyInstanceUID
            assert obj.SeriesInstanceUID != src.SeriesInstanceUID
            assert obj.SOPInstanceUID not in seen_uids
            seen_uids.add(obj.SOPInstanceUID)
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert "NOT FOR DIAGNOSTIC USE" in sc.ImageComments and sc.BurnedInAnnotation == "YES"
        assert sc.pixel_array.shape == (src.Rows, src.Columns, 3)
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
        refs = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence
        assert [r.ReferencedSOPInstanceUID for r in refs] == [src.SOPInstanceUID]
        text = _sr_text(sr)
        row = rows[src_path.stem]
        assert _finding(row["label"]) in text
        for name, value in row["probabilities"].items():
            assert f"Probability of {_finding(name).lower()}" in text
        assert xray_infer.load_model()[1].model_version in text
        # the report names the file that scored: the variant auto picked here, and its precision
        assert f"model SHA-256 {model_digest(variant.path)}" in text
        assert f"precision {variant.precision}" in text
    assert not (out / f"{jpeg.stem}.SR.dcm").exists()


def _finding(label):
    from xray_infer.dicom_results import FINDINGS
    return FINDINGS[label].meaning


def _sr_text(sr):
    """Every code meaning, text and number in the SR content tree, flattened."""
    parts = []

    def walk(items):
        for it in items:
            for key in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
                if key in it:
                    parts.append(it[key][0].CodeMeaning)
            if "MeasuredValueSequence" in it:
                parts.append(str(it.MeasuredValueSequence[0].NumericValue))
            if "TextValue" in it:
                parts.append(it.TextValue)
            if "ContentSequence" in it:
                walk(it.ContentSequence)
    walk(sr.ContentSequence)
    return "\n".join(parts)


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy (Debian's dicom3tools) is not installed; .ci/run installs it")
def test_dicom_results_pass_the_validator(tmp_path):
    sources = _dicom_sources(tmp_path)[:1]
    out = tmp_path / "results"
    assert run("classify", *sources, "--dicom-out", out, "-q").returncode == 0
    for f in sorted(out.iterdir()):
        p = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, (f.name, errors)


def test_overlays_of_large_scans_are_bounded_unless_full_size_is_asked(data, tmp_path):
    from xray_infer.heatmap import OVERLAY_LONG_SIDE
    scan = max(sorted((data / "fullres").glob("*/*.jpeg"))[:40],
               key=lambda p: read_image(p).pixels.shape[1])
    h, w = read_image(scan).pixels.shape
    assert max(h, w) > OVERLAY_LONG_SIDE
    for extra, want in (((), OVERLAY_LONG_SIDE), (("--heatmap-size", "0"), max(h, w))):
        out = tmp_path / f"maps{len(extra)}"
        p = run("classify", scan, "--heatmaps", out, "-q", *extra)
        assert p.returncode == 0, p.stderr
        png = cv2.imread(str(out / f"{scan.stem}.png"))
        assert max(png.shape[:2]) == want and abs(png.shape[1] / png.shape[0] - w / h) < 0.01
    assert run("classify", scan, "--heatmaps", out, "--heatmap-size", "-1").returncode == 2
