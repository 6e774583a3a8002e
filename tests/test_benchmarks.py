"""Every benchmark runs end to end on a tiny input (no timing assertions)."""
import json

import pytest

pytest.importorskip("torch")

from benchmarks.__main__ import COMMANDS, main  # noqa: E402


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "inference"
                                  else n for n in sorted(COMMANDS)])
def test_benchmark_smoke(name, tmp_path, data):
    out = tmp_path / f"{name}.json"
    main([name, "--limit", "3", "--repeat", "1", "--batch-sizes", "1", "2", "--json", str(out)])
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == name and payload["machine"]["cores"] >= 1
    assert payload["results"]


def test_parity_smoke_agrees(tmp_path, data):
    out = tmp_path / "p.json"
    main(["parity", "--limit", "3", "--json", str(out)])
    r = json.loads(out.read_text())["results"]
    assert r["torch_vs_ort_max_abs_logit_diff"] < 1e-4
    assert r["kernel_vs_reference_max_abs_input_diff"] < 1e-4
