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


def test_e2e_compares_the_baseline_model_in_the_same_run(tmp_path, data):
    out = tmp_path / "e2e.json"
    main(["e2e", "--limit", "4", "--repeat", "1", "--json", str(out),
          "--baseline-model", str(ROOT / "benchmarks" / "models" / "v1.0.0.onnx")])
    r = json.loads(out.read_text())["results"]
    assert r["baseline_model"]["version"] == "1.0.0" and r["baseline_model"]["scans_per_s"] > 0
    assert r["speedup_vs_baseline_model"] > 0


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
    assert f"{e2e['xray_infer']:.1f}" in md and "GPU figures go here." in md
    assert "model 1.0.0" in md and "Accuracy parity" in md
