"""Model v4's protocol: its folds, its rule, its stress test, its soup and its bootstrap."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from trainer import protocol, protocol_report  # noqa: E402
from trainer.dataset import load_splits  # noqa: E402
from trainer.metrics import macro_f1  # noqa: E402
from trainer.stress import TRANSFORMS, flip_shares, stressed  # noqa: E402
from trainer.train import js_divergence  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# Folds


def test_folds_partition_the_pool_by_patient_and_keep_every_class(data):
    pool = load_splits(data)["train"]
    held = protocol.fold_indices(pool)
    assert len(held) == protocol.FOLDS
    everything = np.concatenate(held)
    assert len(everything) == len(pool) == len(set(everything.tolist()))  # each image once
    patients = [{pool[i].patient for i in h} for h in held]
    for a in range(len(held)):
        for b in range(a + 1, len(held)):
            assert not patients[a] & patients[b]
    for h in held:
        counts = np.bincount([pool[i].label for i in h], minlength=3)
        assert (counts / counts.sum() > 0.15).all(), counts  # stratified: about 1/4, 1/2, 1/4
    assert [h.tolist() for h in protocol.fold_indices(pool)] == [h.tolist() for h in held]


# The rule


def _table(rows):
    """A cv_table-shaped dict from {recipe: [(macro-F1, normal flip) per fold]}."""
    recipes = {}
    for name, folds in rows.items():
        fr = {f: {"macro_f1": m, "normal_flip": n} for f, (m, n) in enumerate(folds)}
        recipes[name] = {"folds": fr,
                         **{k: protocol._mean_se([r[k] for r in fr.values()])
                            for k in ("macro_f1", "normal_flip")}}
    return {"folds": list(range(len(next(iter(rows.values()))))), "recipes": recipes}


def test_a_recipe_clearly_worse_on_every_fold_leaves_contention():
    table = _table({"r-v2": [(0.80, 0.05), (0.82, 0.05), (0.81, 0.05)],
                    "r-v3": [(0.70, 0.01), (0.71, 0.01), (0.72, 0.01)]})
    choice = protocol.choose_recipe(table)
    assert choice["recipe"] == "r-v2" and "r-v3" in choice["steps"][1] and "out" in choice["steps"][1]


def test_among_recipes_in_contention_the_fewest_normal_flips_wins():
    table = _table({"r-v2": [(0.80, 0.05), (0.78, 0.05), (0.81, 0.05)],
                    "r-v3": [(0.79, 0.04), (0.80, 0.04), (0.79, 0.04)],
                    "r-jsd": [(0.78, 0.02), (0.81, 0.02), (0.80, 0.02)]})
    assert protocol.choose_recipe(table)["recipe"] == "r-jsd"


def test_a_flip_difference_under_the_tie_goes_to_the_cheaper_recipe():
    table = _table({"r-v2": [(0.80, 0.030), (0.78, 0.030), (0.81, 0.030)],
                    "r-jsd": [(0.80, 0.027), (0.79, 0.027), (0.80, 0.027)]})
    assert protocol.choose_recipe(table)["recipe"] == "r-v2"


# Stress test, consistency term, soup, bootstrap


def test_every_stress_transform_keeps_shape_and_range_and_changes_a_film():
    ramp = np.linspace(-0.8, 0.8, 64, dtype=np.float32)
    texture = np.random.default_rng(0).uniform(-0.2, 0.2, (2, 1, 64, 64)).astype(np.float32)
    x = ramp[None, None, None, :] * ramp[None, None, :, None] + texture
    for name in TRANSFORMS:
        y = stressed(x, name, 0.5, 0.5)
        assert y.shape == x.shape and y.dtype == np.float32
        assert y.min() >= -1 - 1e-6 and y.max() <= 1 + 1e-6
        assert np.abs(y - x).mean() > 1e-3, name


def test_flip_shares_count_changed_labels_of_normals_and_pneumonias_apart():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (40, 1, 32, 32)).astype(np.float32)
    labels = np.array([0] * 20 + [1] * 20)
    steady = lambda a: np.tile([[1.0, 0.0, 0.0]], (len(a), 1))  # noqa: E731
    out = flip_shares(steady, x, labels, 0.5, 0.5)
    assert out["normal_mean"] == 0 and out["pneumonia_mean"] == 0
    # labels by mean brightness against the original's median: gamma moves every film across
    threshold = np.median(x.mean((1, 2, 3)))
    bright = lambda a: np.stack([a.mean((1, 2, 3)) > threshold, a.mean((1, 2, 3)) <= threshold,  # noqa
                                 np.zeros(len(a))], 1).astype(float)
    out = flip_shares(bright, x, labels, 0.5, 0.5)
    assert out["normal"]["gamma-0.8"] > 0.2 and out["pneumonia"]["gamma-1.25"] > 0.2
    assert set(out["normal"]) == set(TRANSFORMS)


def test_the_consistency_term_is_zero_for_agreeing_views_and_grows_with_disagreement():
    a = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    assert float(js_divergence(a, a)) == pytest.approx(0, abs=1e-7)
    near, far = js_divergence(a, a + torch.tensor([0.5, 0, 0])), js_divergence(a, a.flip(1))
    assert 0 < float(near) < float(far) <= np.log(2)


def test_a_soup_is_the_mean_of_its_members_and_keeps_integer_buffers():
    s1 = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    s2 = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(7)}
    soup = protocol.average_states([s1, s2])
    assert torch.equal(soup["w"], torch.tensor([2.0, 4.0])) and int(soup["n"]) == 3
    assert torch.equal(protocol.average_states([s1, s1])["w"], s1["w"])


def test_the_paired_bootstrap_sees_noise_as_noise_and_a_clear_win_as_a_win():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    patients = [f"p{i // 2}" for i in range(300)]
    same = protocol.paired_bootstrap(labels, labels, labels, patients, n=200)
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0}
    noisy = np.where(rng.random(300) < 0.3, (labels + 1) % 3, labels)
    worse = np.where(rng.random(300) < 0.6, (labels + 1) % 3, labels)
    won = protocol.paired_bootstrap(labels, noisy, worse, patients, n=200)
    assert won["low"] > 0 and won["low"] < won["difference"] < won["high"]


def test_macro_f1_is_sklearns_to_the_last_bit_including_absent_classes():
    from sklearn.metrics import f1_score
    rng = np.random.default_rng(2)
    for n in [1, 2, 5, 40] * 50:
        labels, preds = rng.integers(0, 3, n), rng.integers(0, 3, n)
        assert macro_f1(labels, preds) == f1_score(
            labels, preds, labels=[0, 1, 2], average="macro", zero_division=0)


def test_resamples_keep_a_patients_films_together():
    patients = ["a", "a", "b", "c", "c", "c"]
    for idx in protocol.patient_resamples(patients, n=50, seed=3):
        drawn = [patients[i] for i in idx]
        assert all(drawn.count(p) % patients.count(p) == 0 for p in set(drawn))


# The report


def test_mcnemar_counts_the_films_only_one_model_gets_right():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    a = np.array([0, 1, 2, 0, 1, 2, 1, 2])  # wrong on the last two
    b = np.array([0, 2, 0, 1, 1, 2, 0, 1])  # wrong on 1, 2, 3
    out = protocol_report.mcnemar(labels, a, b)
    assert (out["only_a_right"], out["only_b_right"]) == (3, 2)
    assert out["p"] == pytest.approx(1.0)
    lopsided = protocol_report.mcnemar(np.zeros(40, int), np.zeros(40, int), np.ones(40, int))
    assert lopsided["only_a_right"] == 40 and lopsided["p"] < 1e-9
    assert protocol_report.mcnemar(labels, a, a) == {"only_a_right": 0, "only_b_right": 0,
                                                     "p": 1.0}


def test_report_figures_hold_their_point_inside_the_interval_and_count_normals():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    probs = np.full((200, 3), 0.1)
    probs[np.arange(200), np.where(rng.random(200) < 0.8, labels, (labels + 1) % 3)] = 0.8
    row = protocol_report.figures(labels, probs, [f"p{i // 3}" for i in range(200)], n=300)
    for k in ("accuracy", "macro_f1", "binary_accuracy"):
        assert row[f"{k}_95"][0] <= row[k] <= row[f"{k}_95"][1] < 1
    called = ((probs.argmax(1) != 0) & (labels == 0)).sum()
    assert row["normals_called_pneumonia"] == called and row["normals"] == (labels == 0).sum()
    assert 0 < row["ece"] < 1 and 0 < row["brier"] < 2 and row["log_loss"] > 0
    perfect = protocol_report.figures(labels, np.eye(3)[labels], list(range(200)), n=50)
    assert perfect["accuracy"] == 1 and perfect["ece"] == pytest.approx(0, abs=1e-6)
    assert protocol_report.targets(perfect)["accuracy"]["met"]
    assert not protocol_report.targets(row)["accuracy"]["met"]


# The command line


def test_v4_cross_validation_runs_resumes_and_refuses_a_soup_before_it_is_done(tmp_path, data):
    cmd = [sys.executable, "-m", "trainer", "v4"]
    common = ["--out", str(tmp_path), "--data", str(data), "--limit", "6", "--device", "cpu"]
    p = subprocess.run(cmd + ["cv", "--recipes", "r-jsd", "--folds", "0", "1"] + common,
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "fold 0 r-jsd" in p.stdout and "fold 1 r-jsd" in p.stdout
    table = protocol.cv_table(tmp_path)
    assert table["folds"] == [0, 1] and table["choice"]["recipe"] == "r-jsd"
    row = table["recipes"]["r-jsd"]["folds"][0]
    assert 0 <= row["normal_flip"] <= 1 and row["n"] > 0
    again = subprocess.run(cmd + ["cv", "--recipes", "r-jsd", "--folds", "0"] + common,
                           capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert again.returncode == 0 and "fold 0 r-jsd:" not in again.stdout  # read back, not rerun
    soup = subprocess.run(cmd + ["soup"] + common, capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert soup.returncode == 1 and "finished folds [0, 1] of 5" in soup.stderr, soup.stderr
    assert "Traceback" not in soup.stderr
    # What an export of the soup writes into the model's metadata: the soup and the protocol's
    # own table, read from the run's folder.
    from trainer.export import protocol_record
    soup_run = tmp_path / "soup" / "runs" / "r-jsd-soup.json"
    soup_run.parent.mkdir(parents=True)
    made = {"recipe": "r-jsd", "members": ["a", "b"], "seeds": [0, 1], "probe": "p"}
    record = protocol_record([soup_run], [{"soup": made}])
    assert record["soup"] == made
    assert record["protocol"]["cv"]["choice"]["recipe"] == "r-jsd"
    assert record["protocol"]["cv"]["recipes"]["r-jsd"]["macro_f1"]["mean"] == \
        table["recipes"]["r-jsd"]["macro_f1"]["mean"]
    assert protocol_record([soup_run], [{}]) == {}
    # The rest of the protocol on the smoke runs: a soup of two, a student distilled from them,
    # the holdout comparisons, the report (whose test split is that of the limited data).
    for step in (["soup", "--recipe", "r-jsd", "--members", "2"], ["student", "--recipe", "r-jsd"],
                 ["compare", "--recipe", "r-jsd"],
                 ["compare", "--recipe", "r-jsd", "--candidate", "student"],
                 ["report", "--json", str(tmp_path / "r.json"), "--md", str(tmp_path / "r.md")]):
        p = subprocess.run(cmd + step + common, capture_output=True, text=True, timeout=600,
                           cwd=ROOT)
        assert p.returncode == 0, p.stderr
    import json
    rec = json.loads((tmp_path / "r.json").read_text())
    assert [r["run"] for r in rec["soup_runs"]] == ["r-jsd-probe_s0", "r-jsd-member_s0",
                                                    "r-jsd-member_s1", "r-jsd-soup_s0",
                                                    "r-jsd-student_s0"]
    assert {(r["recipe"], r["fold"]) for r in rec["cv"]["runs"]} == {("r-jsd", 0), ("r-jsd", 1)}
    assert set(rec["holdout_decisions"]) == {"soup", "student"}
    assert [d["candidate"] for d in rec["holdout_decisions"].values()] == ["v4-soup", "v4-student"]
    assert rec["holdout_decisions"]["student"]["ship"] in ("v4-student", "2.0.0", "3.0.0")
    test = rec["models"][rec["bundled"]]["test"]
    assert test["n"] == 18 and test["normals"] == 6  # --limit 6: six of each class
    assert {"v4-soup vs 2.0.0", "v4-student vs 3.0.0", "3.0.0 vs 2.0.0"} <= set(rec["mcnemar_test"])
    assert rec["models"]["v4-student"]["holdout"]["ece"] >= 0
    page = (tmp_path / "r.md").read_text()
    assert "| r-jsd | 0 |" in page and "McNemar" in page and "chosen: **r-jsd**" in page
    # The student exported: its metadata says how it was made, and `info` prints it.
    model = tmp_path / "m" / "default.onnx"
    p = subprocess.run([sys.executable, "-m", "trainer", "export", "--run",
                        str(tmp_path / "soup" / "runs" / "r-jsd-student_s0.json"), "--out",
                        str(model), "--version", "0.0.1", "--no-fp16", "--no-int8", "--data",
                        str(data), "--limit", "6"], capture_output=True, text=True, timeout=600,
                       cwd=ROOT)
    assert p.returncode == 0, p.stderr
    info = subprocess.run([sys.executable, "-m", "xray_infer", "info", "--model", str(model)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert ("made as        a student distilled from the mean output of 2 fine-tunes of recipe "
            "r-jsd" in info.stdout), info.stdout
    from xray_infer.model import load_model
    spec = load_model(model, providers=["CPUExecutionProvider"], precision="float32")[1]
    assert set(spec.provenance["protocol"]["holdout"]) == {"soup", "student"}
