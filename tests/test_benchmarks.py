"""Every benchmark runs end to end on a tiny input (no timing assertions)."""
import json

import pytest

pytest.importorskip("torch")

from benchmarks.__main__ import COMMANDS, ROOT, main  # noqa: E402


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "inference"
                                  else n for n in sorted(COMMANDS)])
def test_benchmark_smoke(name, tmp_path, data):
    out = tmp_path / f"{name}.json"
    main([name, "--limit", "3", "--repeat", "1", "--batch-sizes", "1", "2", "--json", str(out),
          "--baseline-model", str(ROOT / "benchmarks" / "models" / "v1.0.0.onnx")])
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == name and payload["machine"]["cores"] >= 1
    assert payload["results"]


def test_parity_smoke_agrees(tmp_path, data):
    out = tmp_path / "p.json"
    main(["parity", "--limit", "3", "--json", str(out)])
    r = json.loads(out.read_text())["results"]
    assert r["torch_vs_ort_max_abs_logit_diff"] < 1e-4
    assert r["kernel_vs_reference_max_abs_input_diff"] < 1e-4
    assert set(r["reduced_decoding"]) == {"float32", "int8"}
    assert r["reduced_decoding"]["float32"]["n"] == 3
    assert r["int8_parity"]["val"]["agreement"] >= 0.99


def test_e2e_compares_the_baseline_model_in_the_same_run(tmp_path, data):
    out = tmp_path / "e2e.json"
    main(["e2e", "--limit", "4", "--repeat", "1", "--json", str(out),
          "--baseline-model", str(ROOT / "benchmarks" / "models" / "v1.0.0.onnx"),
          "--baseline-model", str(ROOT / "benchmarks" / "models" / "v2.0.0.onnx")])
    r = json.loads(out.read_text())["results"]
    paths = r["paths"]
    # every library path, the thread-split row and the baseline model, against one bound
    assert {v["variant"] for v in paths.values()} >= {"float32", "int8"}
    assert {v["decode"] for v in paths.values()} == {"full", "reduced"}
    assert any("spin" in name for name in paths)
    assert {"model v1.0.0 path (float32, full-size decoding)",
            "model v2.0.0 path (float32, full-size decoding)",
            "model v2.0.0 path (int8, full-size decoding)"} <= set(paths)
    assert all(v["scans_per_s"] > 0 and v["fraction_of_decode_bound"] > 0 for v in paths.values())
    assert r["fraction_of_decode_bound"] == paths[r["default"]]["fraction_of_decode_bound"]
    for v in r["single_scan_latency"].values():
        assert 0 < v["p50_ms"] <= v["p95_ms"] and v["n"] == 4


def test_report_is_written_from_the_json_alone(tmp_path, data):
    for name in ("e2e", "parity"):
        main([name, "--limit", "3", "--repeat", "1", "--json", str(tmp_path / f"{name}.json"),
              "--baseline-model", str(ROOT / "benchmarks" / "models" / "v1.0.0.onnx")])
    note = tmp_path / "gpu.md"
    note.write_text("GPU figures go here.")
    out = tmp_path / "benchmarks.md"
    main(["report", "--json-dir", str(tmp_path), "--out", str(out), "--gpu-note", str(note)])
    md = out.read_text()
    e2e = json.loads((tmp_path / "e2e.json").read_text())["results"]
    default = e2e["paths"][e2e["default"]]
    assert f"{default['scans_per_s']:.1f}" in md and "GPU figures go here." in md
    assert "model v1.0.0" in md and "Accuracy parity" in md
    assert "reduced vs full-size decoding, int8" in md and "Single-scan latency" in md


def test_expected_calibration_error_is_the_weighted_gap():
    from trainer.metrics import reliability
    # ten answers at 0.95 of which nine are right, ten at 0.55 of which five are right
    rows, ece = reliability([0.95] * 10 + [0.55] * 10, [1] * 9 + [0] + [1] * 5 + [0] * 5)
    assert [r["n"] for r in rows] == [10, 10]
    assert ece == pytest.approx(0.5 * 0.05 + 0.5 * 0.05)
    assert reliability([0.8, 0.8], [1, 0])[1] == pytest.approx(0.3)
    assert reliability([1.0], [1])[0][0]["bin"] == 14  # a probability of 1 is in the last bin


def test_accuracy_and_calibration_on_a_few_scans(tmp_path, data):
    for name in ("accuracy", "calibration"):
        out = tmp_path / f"{name}.json"
        extra = ["--out", str(tmp_path / "r.png")] if name == "calibration" else []
        main([name, "--limit", "12", "--json", str(out), *extra])
        payload = json.loads(out.read_text())
        assert payload["benchmark"] == name
    accuracy = json.loads((tmp_path / "accuracy.json").read_text())["rows"]["float32"]
    assert accuracy["n"] == 12 and 0 <= accuracy["accuracy_3class"] <= 1
    calibration = json.loads((tmp_path / "calibration.json").read_text())["results"]
    assert calibration["float32"]["test"]["n"] == 12 and (tmp_path / "r.png").stat().st_size


def test_the_heatmap_benchmark_times_three_settings_of_one_folder(tmp_path, data):
    out = tmp_path / "heatmaps.json"
    main(["heatmaps", "--limit", "2", "--repeat", "1", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert list(rows) == ["plain", "overlays (default size)", "overlays (full size)"]
    assert rows["plain"]["bytes_written"] == 0 and rows["plain"]["cost_vs_plain"] == 1.0
    assert 0 < rows["overlays (default size)"]["bytes_written"] \
        < rows["overlays (full size)"]["bytes_written"]
