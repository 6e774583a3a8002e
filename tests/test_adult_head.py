"""The adult head: an adult's chest film gets no pediatric label, whatever format it comes in,
unless a DICOM header says how old the patient is (the metadata gate decides then) or the caller
asks for adults; the films it refuses are ones its fit never saw."""
import json

import pytest

from xray_infer import Classifier, load_model
from xray_infer.decode import read_image

adult_head = pytest.importorskip("trainer.adult_head")
pydicom = pytest.importorskip("pydicom")
from helpers import SAMPLES  # noqa: E402
from helpers import run_cli as run  # noqa: E402
from dicomfiles import write_dicom  # noqa: E402

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def unseen_adults(data):
    """Adult frontal films whose patients the head's fit held out, PA and AP."""
    films = [f for f in adult_head.films(data / "adult-dev") if adult_head.held_out_adult(f.patient)]
    return [f for f in films if f.view == "PA"][:12] + [f for f in films if f.view == "AP"][:4]


@pytest.fixture(scope="module")
def past_the_image_gate(unseen_adults):
    """Those the image gate alone lets through (accepting adults turns the head off)."""
    wide = Classifier(providers=CPU, ages=(1, 99))
    passed = [f.path for f, r in zip(unseen_adults, wide.classify([f.path for f in unseen_adults]))
              if r.ok]
    assert passed, "every unseen adult film was refused by the image gate: nothing to test"
    return passed


def test_the_bundled_model_records_its_adult_head(data):
    spec = load_model(providers=CPU, precision="float32")[1]
    head = spec.adult_head
    assert spec.adult_output == adult_head.ADULT_OUTPUT
    assert head["validation_kept"] >= adult_head.VALIDATION_KEEP - 1 / 788
    assert "validation" in head["threshold_rule"] and "adult-dev" in head["fitted_on"]
    held = [f for f in adult_head.films(data / "adult-dev") if adult_head.held_out_adult(f.patient)]
    refused = head["development"]["held_out_adults_refused"]
    assert refused["all"]["n"] == len(held) and f"{len(held)} adult patients" in head["held_out"]
    assert refused["PA"]["n"] + refused["AP"]["n"] == len(held)
    # every variant carries the same head, read back from its own metadata
    for precision in ("float16", "int8"):
        assert load_model(providers=CPU, precision=precision)[1].adult_head == head
    assert Classifier(providers=CPU).gate.adult_threshold == head["threshold"]


def test_adult_films_the_fit_never_saw_are_refused(unseen_adults):
    results = Classifier(providers=CPU).classify([f.path for f in unseen_adults])
    assert all(r.status == "out_of_scope" for r in results), [r for r in results if r.ok]
    by_head = [r for r in results if r.refused_by == "adult_head"]
    assert by_head and all("looks like an adult's film" in r.refusal for r in by_head)


def test_test_children_are_kept(data):
    children = sorted((data / "chest_xray" / "test").glob("*/*.jpeg"))[::8]
    results = Classifier(providers=CPU).classify(children)
    kept = sum(r.refused_by != "adult_head" for r in results)
    assert kept / len(results) >= 0.95, [r.source for r in results if r.refused_by]
    assert all(r.ok for r in Classifier(providers=CPU).classify(SAMPLES))


def test_a_header_age_decides_instead_of_the_head(past_the_image_gate, tmp_path):
    pixels = read_image(past_the_image_gate[0]).pixels
    base = {"PatientID": "ADULT", "StudyInstanceUID": pydicom.uid.generate_uid(),
            "SeriesInstanceUID": pydicom.uid.generate_uid()}
    silent = write_dicom(tmp_path / "silent.dcm", pixels, 8, **base)
    child = write_dicom(tmp_path / "child.dcm", pixels, 8, PatientAge="004Y", **base)
    born = write_dicom(tmp_path / "born.dcm", pixels, 8, PatientBirthDate="19700101",
                       StudyDate="20200101", **base)
    r_silent, r_child, r_born = Classifier(providers=CPU).classify([silent, child, born])
    assert r_silent.refused_by == "adult_head", r_silent
    assert r_child.ok, r_child  # the header says four years: the metadata gate's call
    assert r_born.refused_by == "PatientAge" and "50.0 years" in r_born.refusal


def test_accepting_adults_or_scope_off_labels_an_adult_film(past_the_image_gate):
    film = past_the_image_gate[0]
    assert Classifier(providers=CPU).classify([film])[0].refused_by == "adult_head"
    wide = Classifier(providers=CPU, ages=(1, 99)).classify([film])[0]
    assert wide.ok and wide.scope == "on, ages 1-99"
    p = run("classify", film, "--scope", "off", "--format", "jsonl")
    assert p.returncode == 0, p.stderr
    row = json.loads(p.stdout.splitlines()[0])
    assert row["status"] == "classified" and row["scope"] == "off"
    p = run("classify", film, "--format", "jsonl")
    row = json.loads(p.stdout.splitlines()[0])
    assert row["status"] == "out_of_scope" and "looks like an adult's film" in row["error"]


def test_info_shows_the_head():
    p = run("info")
    assert p.returncode == 0, p.stderr
    line = next(line for line in p.stdout.splitlines() if line.startswith("adult head"))
    assert "threshold" in line and "held out of its fit" in line


def test_the_head_is_fitted_into_the_graph_with_its_threshold_and_records(tmp_path, data):
    """``python -m trainer adult-head`` on a tiny exported model and a few real films: a graph
    output whose threshold is the validation quantile, and the figures the metadata promises."""
    import csv

    import numpy as np
    import torch

    from trainer.export import add_adult_head, export
    from trainer.model import NetConfig, build
    from trainer.train import RunConfig
    torch.manual_seed(0)
    net = NetConfig(widths=(4, 8), input_size=32)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 1, 32, 32)).astype(np.float32)
    arrays = {"train": (x, np.arange(40) % 3), "val": (x[:20], np.arange(20) % 3),
              "test": (x[20:], np.arange(20) % 3)}
    model = tmp_path / "m.onnx"
    export([(RunConfig(net=net), build(net).eval().state_dict())], model, arrays,
           model_version="0", provenance={})
    root = tmp_path / "data"
    for folder, n in (("adult-dev", 14), ("peds-other-dev", 3)):
        rows = list(csv.DictReader(open(data / folder / "index.csv", newline="")))[:n]
        (root / folder).mkdir(parents=True)
        with open(root / folder / "index.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        (root / folder / "nih-cxr14").symlink_to(data / folder / "nih-cxr14")
    spec = add_adult_head(model, arrays, [f"p{i // 2}" for i in range(40)], root)
    sess, written = load_model(model, providers=CPU, precision="float32")
    assert written.adult_head == spec.adult_head and written.adult_output == "adult_score"
    scores = sess.run(["adult_score"], {"image": x[:20]})[0]
    head = spec.adult_head
    assert head["threshold"] == pytest.approx(np.quantile(scores, adult_head.VALIDATION_KEEP),
                                              abs=1e-3)
    held = sum(adult_head.held_out_adult(r.patient)
               for r in adult_head.films(root / "adult-dev"))
    assert head["development"]["held_out_adults_refused"]["all"]["n"] == held
    assert sum(v["n"] for v in head["development"]["peds_other_kept_leave_one_out"].values()) == 3
    assert head["regularisation"]["C"] in adult_head.C_GRID
