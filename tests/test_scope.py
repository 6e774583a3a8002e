"""The scope gate: DICOM metadata outside the model's population, and images unlike its
training radiographs, get no label; radiographs it was made for still do."""
import csv
import json

import cv2
import numpy as np
import pytest

from xray_infer import Classifier
from xray_infer.decode import read_image
from xray_infer.scope import age_years, parse_ages

trainer_scope = pytest.importorskip("trainer.scope")
VALIDATION_PASS = trainer_scope.VALIDATION_PASS

pydicom = pytest.importorskip("pydicom")
from helpers import SAMPLES  # noqa: E402
from helpers import run_cli as run  # noqa: E402
from dicomfiles import write_dicom  # noqa: E402



@pytest.fixture(scope="module")
def clf():
    return Classifier(providers=["CPUExecutionProvider"])


def dx(path, sample=SAMPLES[0], **attributes):
    """A DX of a sample chest scan, with ``attributes`` in its header."""
    base = {"PatientID": "SCOPE", "StudyInstanceUID": pydicom.uid.generate_uid(),
            "SeriesInstanceUID": pydicom.uid.generate_uid()}
    return write_dicom(path, read_image(sample).pixels, 8, **{**base, **attributes})


def test_the_bundled_model_declares_its_population_and_gate(clf):
    spec = clf.spec
    assert spec.population["training_ages"] == [1, 5]
    assert spec.population["accepted_ages"] == [1, 5]
    assert spec.population["modalities"] == ["CR", "DX"]
    assert spec.scope_output == "scope_distance" and spec.scope["threshold"] > 0
    assert "validation" in spec.scope["threshold_rule"]
    assert "training-split" in spec.scope["fitted_on"]
    # the threshold is a percentile of the validation distances: what passes is that share,
    # less at most one image of the 788
    assert spec.scope["validation_passed"] >= VALIDATION_PASS - 1 / 788


@pytest.mark.parametrize("attributes, gate, words", [
    ({"BodyPartExamined": "HAND"}, "BodyPartExamined", "BodyPartExamined HAND"),
    ({"BodyPartExamined": "KNEE", "ViewPosition": "AP"}, "BodyPartExamined", "KNEE"),
    ({"ViewPosition": "LL"}, "ViewPosition", "ViewPosition LL"),
    ({"Modality": "CT"}, "Modality", "Modality CT"),
    ({"PatientAge": "034Y"}, "PatientAge", "patient age 34.0 years"),
    ({"PatientBirthDate": "19900101", "StudyDate": "20230101"}, "PatientAge", "33.0 years"),
    ({"PatientAge": "002W"}, "PatientAge", "0.0 years"),
])
def test_the_metadata_gate_refuses_with_the_attribute_and_value(clf, tmp_path, attributes, gate,
                                                               words):
    r = clf.classify([str(dx(tmp_path / "x.dcm", **attributes))])[0]
    assert r.status == "out_of_scope" and r.refused_by == gate, r
    assert r.label is None and r.probabilities is None and r.error is None
    assert r.refusal.startswith("out of scope: ") and words in r.refusal


@pytest.mark.parametrize("attributes", [
    {}, {"BodyPartExamined": "CHEST", "ViewPosition": "PA"}, {"PatientAge": "003Y"},
    {"PatientBirthDate": "20200101", "StudyDate": "20230601"}, {"PatientAge": "garbage"},
    {"BodyPartExamined": "chest", "ViewPosition": "ap"},
])
def test_chest_radiographs_of_the_population_are_classified(clf, tmp_path, attributes):
    r = clf.classify([str(dx(tmp_path / "x.dcm", **attributes))])[0]
    assert r.status == "classified" and r.label in clf.class_names, r


def test_ages_widen_the_population_and_scope_off_restores_labels(tmp_path):
    adult = str(dx(tmp_path / "adult.dcm", PatientAge="034Y"))
    hand = str(dx(tmp_path / "hand.dcm", BodyPartExamined="HAND"))
    wide = Classifier(providers=["CPUExecutionProvider"], ages=(0, 40)).classify([adult])[0]
    assert wide.ok and wide.scope == "on, ages 0-40"
    off = Classifier(providers=["CPUExecutionProvider"], scope=False).classify([adult, hand])
    assert all(r.ok and r.scope == "off" for r in off)
    with pytest.raises(ValueError):
        Classifier(providers=["CPUExecutionProvider"], scope="maybe")


def test_age_parsing():
    assert age_years({"PatientAge": "005Y"}) == 5
    assert age_years({"PatientAge": "018M"}) == 1.5
    assert age_years({"PatientBirthDate": "20200301", "StudyDate": "20230301"}) == \
        pytest.approx(3.0, abs=0.01)
    assert age_years({"PatientBirthDate": "20200301", "SeriesDate": "20210301"}) == \
        pytest.approx(1.0, abs=0.01)
    assert age_years({"PatientBirthDate": "2020XX01", "StudyDate": "20230301"}) is None
    assert age_years({}) is None
    assert parse_ages("0-17") == (0, 17)
    for bad in ("17-3", "x", "-1-4"):
        with pytest.raises(ValueError):
            parse_ages(bad)


def synthetic(scan):
    page = np.full((512, 640), 255, np.uint8)
    for line in range(10):
        cv2.putText(page, "Discharge summary, page 2", (10, 40 + 40 * line),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.9, 0, 2)
    rng = np.random.default_rng(0)
    return {"rotated 90": np.ascontiguousarray(np.rot90(scan)), "inverted": 255 - scan,
            "noise": rng.integers(0, 256, (512, 640), dtype=np.uint8), "text": page,
            "blank": np.full((512, 640), 17, np.uint8)}


def test_the_image_gate_refuses_synthetic_non_radiographs(clf, samples):
    scan = read_image(samples / "IM-0001-0001.jpeg").pixels
    cases = synthetic(scan)
    results = clf.classify(list(cases.values()))
    for name, r in zip(cases, results):
        assert r.status == "out_of_scope" and r.refused_by == "image", (name, r)
    assert "uniform" in results[-1].refusal
    assert "unlike the training radiographs" in results[0].refusal
    assert all(r.ok for r in clf.classify(SAMPLES))  # the scans it was made for pass


def test_the_image_gate_refuses_the_development_set(clf, data):
    """``ood-dev``: hands, pelvis, CT/MR/US, a photograph. Never used to set the threshold (the
    model's metadata records what was); this checks the gate still refuses them."""
    files = sorted(p for p in (data / "ood-dev").glob("*/*.*"))
    results = clf.classify(files)
    decodable = [r for r in results if r.status != "failed"]
    assert len(decodable) >= 25
    refused = [r for r in decodable if r.status == "out_of_scope"]
    assert len(refused) / len(decodable) >= 0.95, [r.source for r in decodable if r.ok]
    for r in results:
        if "xray_other_bodypart" in str(r.source):
            assert r.status == "out_of_scope", r


def test_a_secondary_capture_of_noise_is_refused_by_the_image_gate(clf, tmp_path):
    noise = np.random.default_rng(1).integers(0, 256, (400, 500), dtype=np.uint8)
    path = write_dicom(tmp_path / "sc.dcm", noise, 8, Modality="OT",
                       StudyInstanceUID=pydicom.uid.generate_uid())
    r = clf.classify([str(path)])[0]
    assert r.status == "out_of_scope" and r.refused_by == "image"


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_refused_input_is_a_row_of_its_own_in_every_format(tmp_path, fmt):
    hand = dx(tmp_path / "hand.dcm", BodyPartExamined="HAND")
    out, empty = tmp_path / f"out.{fmt}", tmp_path / "empty.jpeg"
    empty.write_bytes(b"")
    p = run("classify", SAMPLES[0], hand, empty, "-o", out)
    assert p.returncode == 1, p.stderr  # the empty file failed; a refusal is no failure
    assert "1 classified, 1 out of scope, 1 failed" in p.stderr
    if fmt == "csv":
        rows = list(csv.DictReader(out.open()))
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    else:
        import pyarrow.parquet as pq
        rows = pq.read_table(out).to_pylist()
    assert [r["status"] for r in rows] == ["classified", "out_of_scope", "failed"]
    assert all(r["scope"] == "on" for r in rows)
    refused = rows[1]
    assert "BodyPartExamined HAND" in refused["error"] and not refused["label"]
    probs = refused["probabilities"] if fmt == "jsonl" else refused["p_normal"]
    assert probs in (None, "")
    p = run("classify", SAMPLES[0], hand, "--scope", "off", "-f", "jsonl", "-q")
    assert p.returncode == 0
    assert [json.loads(line)["status"] for line in p.stdout.splitlines()] == ["classified"] * 2
    assert all(json.loads(line)["scope"] == "off" for line in p.stdout.splitlines())


def test_no_heatmap_and_no_dicom_result_for_a_refused_input(tmp_path):
    hand = dx(tmp_path / "hand.dcm", BodyPartExamined="HAND")
    chest = dx(tmp_path / "chest.dcm")
    maps, dicom = tmp_path / "maps", tmp_path / "dicom"
    p = run("classify", hand, chest, "--heatmaps", maps, "--dicom-out", dicom, "-q")
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in maps.iterdir()) == ["chest.png"]
    assert sorted(f.name for f in dicom.iterdir()) == ["chest.SC.dcm", "chest.SR.dcm"]


def test_results_of_an_algorithm_are_refused_when_they_come_back(clf, tmp_path):
    """A study sent back with its results (a routing rule forwarding everything): the Secondary
    Capture names a processing algorithm in its Contributing Equipment (IHE AIR), the heatmap
    overlay is a colour image; neither gets a label. Without that item the SC's colour still
    refuses it; with the scope off its pixels are classified (research)."""
    chest = dx(tmp_path / "chest.dcm")
    maps, dicom = tmp_path / "maps", tmp_path / "dicom"
    p = run("classify", chest, "--heatmaps", maps, "--dicom-out", dicom, "-q")
    assert p.returncode == 0, p.stderr
    sc, overlay = dicom / "chest.SC.dcm", maps / "chest.png"
    anonymous = tmp_path / "anonymous-sc.dcm"
    ds = pydicom.dcmread(sc)
    del ds.ContributingEquipmentSequence
    ds.save_as(anonymous)
    by_item, by_colour, overlay_r = clf.classify([sc, anonymous, overlay])
    assert by_item.status == "out_of_scope" and by_item.refused_by == "ContributingEquipment"
    assert "a processing algorithm's result" in by_item.refusal
    for r in (by_colour, overlay_r):
        assert r.status == "out_of_scope" and r.refused_by == "image", r
        assert "a colour image (" in r.refusal and "of its pixels in colour" in r.refusal
    assert all(r.ok for r in Classifier(providers=["CPUExecutionProvider"], scope=False)
               .classify([sc, overlay]))


def test_a_grey_film_stored_in_colour_is_classified_and_a_colour_image_is_not(clf, tmp_path):
    """Grey stored as RGB (PNG) or YCbCr (JPEG), and a film with a small burned-in coloured mark,
    are classified; the same film in false colour is refused by its colour alone."""
    scan = read_image(SAMPLES[0]).pixels
    bgr = cv2.cvtColor(scan, cv2.COLOR_GRAY2BGR)
    marked = bgr.copy()
    h, w = scan.shape
    cv2.rectangle(marked, (w // 20, h // 20), (w // 20 + w // 6, h // 20 + h // 6), (0, 0, 255),
                  -1)  # a red label over 1/36 of the film
    false_colour = cv2.applyColorMap(scan, cv2.COLORMAP_JET)
    cases = {"grey.png": bgr, "grey.jpeg": bgr, "marked.png": marked,
             "false-colour.png": false_colour,  # and as a 16-bit export of 12-bit values:
             "false-colour-12bit.png": false_colour.astype(np.uint16) * 16}
    paths = []
    for name, image in cases.items():
        paths.append(tmp_path / name)
        assert cv2.imwrite(str(paths[-1]), image)
    grey_png, grey_jpeg, mark, *false_colours = clf.classify(paths)
    assert grey_png.ok and grey_jpeg.ok and mark.ok, (grey_png, grey_jpeg, mark)
    assert grey_png.label == clf.classify([scan])[0].label
    for r in false_colours:
        assert r.status == "out_of_scope" and "a colour image" in r.refusal, r


@pytest.mark.parametrize("modality, kw", [
    ("MR", dict(photometric="PALETTE COLOR")),
    ("US", dict(NumberOfFrames=2)),
])
def test_a_header_out_of_scope_is_judged_before_pixels_the_decoder_refuses(clf, tmp_path,
                                                                          modality, kw):
    gray = read_image(SAMPLES[0]).pixels
    path = write_dicom(tmp_path / f"{modality}.dcm", gray, 8, Modality=modality, **kw)
    r = clf.classify([str(path)])[0]
    assert r.status == "out_of_scope" and r.refused_by == "Modality", r
    # without the gate the same file is the decoding failure it always was
    off = Classifier(providers=["CPUExecutionProvider"], scope=False).classify([str(path)])[0]
    assert off.status == "failed" and "refused" not in (off.refused_by or "")
    # in a folder with a chest film the run's status stays 0: an out-of-scope input is no error
    chest = write_dicom(tmp_path / "chest.dcm", gray, 8)
    p = run("classify", path, chest)
    assert p.returncode == 0 and "1 classified, 1 out of scope, 0 failed" in p.stderr, p.stderr
