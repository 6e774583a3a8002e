"""The xray-infer command line, end to end on real files (a subprocess per run)."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import xray_infer

SAMPLES = Path(xray_infer.__file__).parent / "samples"


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "xray_infer", *map(str, args)],
                          capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "scans"
    d.mkdir()
    for f in sorted(SAMPLES.glob("*.jpeg"))[:4]:
        shutil.copy(f, d / f.name)
    (d / "notes.txt").write_text("not an image, and not collected: wrong extension")
    sub = d / "sub"
    sub.mkdir()
    shutil.copy(sorted(SAMPLES.glob("*.jpeg"))[4], sub / "deep.JPG")
    return d


def test_csv_to_stdout(folder):
    p = run("classify", folder, "--quiet")
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(p.stdout.splitlines()))
    assert len(rows) == 4  # not recursive: sub/ is ignored, notes.txt is not an image
    assert list(rows[0]) == ["path", "label", "p_normal", "p_bacterial", "p_viral", "error"]
    for r in rows:
        assert r["label"] in ("normal", "bacterial", "viral") and r["error"] == ""
        assert abs(sum(float(r[k]) for k in ("p_normal", "p_bacterial", "p_viral")) - 1) < 1e-4
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)


def test_jsonl_recursive_with_failures(folder, tmp_path):
    (folder / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "out.jsonl"
    p = run("classify", folder, "--recursive", "-o", out, "--batch-size", "2")
    assert p.returncode == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and bad[0]["path"].endswith("broken.jpeg") and bad[0]["label"] is None
    assert "1 failed" in p.stderr and "broken.jpeg" in p.stderr
    assert any(r["path"].endswith("deep.JPG") for r in rows)


def test_resume_skips_rows_already_written(folder, tmp_path):
    out = tmp_path / "out.csv"
    first = sorted(folder.glob("*.jpeg"))[:2]
    assert run("classify", *first, "-o", out, "-q").returncode == 0
    assert run("classify", folder, "-o", out).returncode == 2  # exists: refuse to clobber
    p = run("classify", folder, "-o", out, "--resume")
    assert p.returncode == 0, p.stderr
    assert "2 skipped" in p.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4 and len({r["path"] for r in rows}) == 4


def test_usage_errors_before_model_load(tmp_path):
    p = run("classify", tmp_path / "missing")
    assert p.returncode == 2 and "no such file" in p.stderr
    p = run("classify", SAMPLES, "--resume")
    assert p.returncode == 2 and "--resume needs --output" in p.stderr
    p = run("classify", SAMPLES, "--model", tmp_path / "none.onnx")
    assert p.returncode == 2
    p = run("classify", SAMPLES, "--providers", "NoSuchExecutionProvider", "-q")
    assert p.returncode == 2 and "CPUExecutionProvider" in p.stderr


def test_explicit_bad_file_is_reported_not_dropped(tmp_path):
    bad = tmp_path / "x.dat"
    bad.write_bytes(b"junk")
    p = run("classify", bad, SAMPLES / "IM-0001-0001.jpeg", "-f", "jsonl", "-q")
    assert p.returncode == 1
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["error"] is None for r in rows] == [False, True]


def test_info():
    p = run("info", "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["spec"]["class_names"] == ["normal", "bacterial", "viral"]
    assert "CPUExecutionProvider" in info["available_providers"]
    p = run("info")
    assert p.returncode == 0 and "test metrics" in p.stdout
