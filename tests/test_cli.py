"""The xray-infer command line, end to end on real files (a subprocess per run)."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import SAMPLE_DIR as SAMPLES
from helpers import as_foreground
from helpers import run_cli as run


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
    assert list(rows[0]) == ["path", "label", "p_normal", "p_bacterial", "p_viral", "error",
                             "status", "scope"]
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


@pytest.mark.parametrize("args,message", [
    (["--threads", "0"], "--threads: '0' is not a whole number of at least 1"),
    (["--workers", "0"], "--workers: '0' is not a whole number of at least 1"),
    (["--batch-size", "0"], "--batch-size: '0' is not a whole number of at least 1"),
    (["--batch-size", "-3"], "--batch-size: '-3' is not a whole number of at least 1"),
    (["-o", "{out}", "--resume", "--overwrite"], "contradict"),
    (["-o", "{out}", "--retry-failed"], "--retry-failed needs --resume"),
    (["-o", "{tmp}"], "is a directory"),
])
def test_option_values_and_combinations_are_checked_first(tmp_path, args, message):
    """A broken model file would fail the load; the option error must come first."""
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    args = [a.format(out=tmp_path / "o.csv", tmp=tmp_path) for a in args]
    p = run("classify", SAMPLES, "--model", broken, *args)
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert not (tmp_path / "o.csv").exists()


def _first_two(folder):
    return sorted(folder.glob("*.jpeg"))[:2]


def test_resume_takes_the_format_from_the_file(folder, tmp_path):
    out = tmp_path / "results.txt"  # the suffix says nothing
    assert run("classify", *_first_two(folder), "-o", out, "-f", "csv", "-q").returncode == 0
    before = out.read_bytes()
    p = run("classify", folder, "-o", out, "--resume", "-f", "jsonl")
    assert p.returncode == 2 and "holds csv rows" in p.stderr
    assert out.read_bytes() == before  # untouched
    p = run("classify", folder, "-o", out, "--resume")
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4 and len({r["path"] for r in rows}) == 4


def test_resume_refuses_a_file_with_other_columns(folder, tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("path,label,p_a,p_b,error\nx.jpeg,a,0.5,0.5,\n")
    before = out.read_bytes()
    p = run("classify", folder, "-o", out, "--resume")
    assert p.returncode == 2 and "has columns" in p.stderr
    assert out.read_bytes() == before
    out.write_text("some notes\nnot a results file\n")
    p = run("classify", folder, "-o", out, "--resume")
    assert p.returncode == 2 and "refusing to append" in p.stderr


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_resume_drops_a_row_cut_by_an_interruption(folder, tmp_path, fmt):
    out = tmp_path / f"out.{fmt}"
    assert run("classify", *_first_two(folder), "-o", out, "-q").returncode == 0
    text = out.read_text()
    cut = text[: len(text) - len(text.splitlines()[-1]) // 2 - 1]  # half of the last row
    out.write_text(cut)
    p = run("classify", folder, "-o", out, "--resume")
    assert p.returncode == 0, p.stderr
    assert "1 skipped" in p.stderr  # the cut row's input is scored again
    lines = out.read_text().splitlines()
    if fmt == "csv":
        rows = list(csv.DictReader(lines))
    else:
        rows = [json.loads(line) for line in lines]
    assert len(rows) == 4 and len({r["path"] for r in rows}) == 4
    assert all(r["label"] for r in rows)


def test_resume_matches_paths_by_their_absolute_form(folder, tmp_path):
    out = tmp_path / "out.csv"
    names = [f"scans/{p.name}" for p in _first_two(folder)]
    assert run("classify", *names, "-o", out, "-q", cwd=folder.parent).returncode == 0
    p = run("classify", "./scans", "-o", out, "--resume", cwd=folder.parent)
    assert p.returncode == 0 and "2 skipped" in p.stderr, p.stderr
    assert len(list(csv.DictReader(out.open()))) == 4


def test_retry_failed_replaces_the_failed_rows(folder, tmp_path):
    good = sorted(folder.glob("*.jpeg"))[0]
    broken = folder / "zz-late.jpeg"
    broken.write_bytes(good.read_bytes()[:500])  # still being copied when first scored
    out = tmp_path / "out.jsonl"
    assert run("classify", folder, "-o", out, "-q").returncode == 1
    broken.write_bytes(good.read_bytes())  # the copy has finished
    p = run("classify", folder, "-o", out, "--resume")
    assert p.returncode == 0 and "5 skipped" in p.stderr  # without --retry-failed: kept
    assert "1 of them with an error (--retry-failed" in p.stderr
    p = run("classify", folder, "-o", out, "--resume", "--retry-failed")
    assert p.returncode == 0 and "1 failed earlier and retried" in p.stderr, p.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and len({r["path"] for r in rows}) == 5
    assert all(r["error"] is None for r in rows)


def test_overwrite_replaces_the_file(folder, tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("old contents\n")
    p = run("classify", folder, "-o", out, "--overwrite", "-q")
    assert p.returncode == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4 and "old contents" not in out.read_text()


def test_an_input_reached_twice_gets_one_row(folder):
    one = sorted(folder.glob("*.jpeg"))[0]
    p = run("classify", folder, one, f"{folder}/./{one.name}")
    assert p.returncode == 0
    rows = list(csv.DictReader(p.stdout.splitlines()))
    assert len(rows) == 4 and "2 repeated input(s) scored once" in p.stderr


@pytest.mark.slow
def test_interrupt_exits_130_and_resume_completes(tmp_path):
    """SIGINT mid-run: exit status 130, every written row complete; --resume then scores
    each remaining input exactly once.

    The run writes to a pipe this test stops reading, shrunk to one page: the run blocks on its
    output long before its 400 rows are out, so the signal always arrives mid-run, however
    fast the machine."""
    import fcntl
    import os
    import signal
    scans = tmp_path / "many"
    scans.mkdir()
    samples = sorted(SAMPLES.glob("*.jpeg"))
    for i in range(400):
        os.symlink(samples[i % len(samples)], scans / f"{i:04d}.jpeg")
    proc = subprocess.Popen([sys.executable, "-m", "xray_infer", "classify", str(scans),
                             "--batch-size", "4", "-q"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=as_foreground)
    fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)
    head = [proc.stdout.readline() for _ in range(13)]  # the header and 12 rows
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    out = tmp_path / "out.csv"
    out.write_text("".join(head) + rest)
    rows = list(csv.DictReader(out.open()))
    assert 12 <= len(rows) < 400 and all(r["label"] and r["status"] == "classified" for r in rows)
    p = run("classify", scans, "-o", out, "--resume", "--batch-size", "64")
    assert p.returncode == 0, p.stderr
    paths = [r["path"] for r in csv.DictReader(out.open())]
    assert len(paths) == 400 and len(set(paths)) == 400


def test_named_pipes_and_devices_are_error_rows_not_a_hang(tmp_path):
    import os
    folder = tmp_path / "scans"
    folder.mkdir()
    os.mkfifo(folder / "scan.jpeg")
    shutil.copy(SAMPLES / "IM-0001-0001.jpeg", folder)
    p = run("classify", folder, "/dev/zero", "-f", "jsonl", "-q")
    assert p.returncode == 1
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["status"] for r in rows] == ["classified", "failed", "failed"]
    assert all("not a regular file" in r["error"] for r in rows[1:])


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
    assert info["pipeline"] == {"workers": os.cpu_count(), "batch_size": 8, "threads_per_call": 1}
    p = run("info")
    assert p.returncode == 0 and "test metrics" in p.stdout
    assert f"on the CPU {os.cpu_count()} worker thread(s), each decoding and scoring batches of 8 " \
           f"with 1 ONNX Runtime thread(s) per call" in p.stdout


@pytest.mark.parametrize("text,reason", [("localhost", "not HOST:PORT"), ("h:0", "port must be"),
                                         ("h:70000", "port must be"), (":104", "not HOST:PORT"),
                                         ("h:104:" + "A" * 17, "1 to 16 printable characters")])
def test_peer_addresses_are_checked_before_anything_runs(text, reason):
    p = run("send", SAMPLES / "IM-0001-0001.jpeg", "--to", text)
    assert p.returncode == 2 and reason in p.stderr


def test_peer_parsing():
    from xray_infer.peer import Peer
    assert Peer.parse("pacs:104:ORTHANC") == Peer("pacs", 104, "ORTHANC")
    assert Peer.parse("10.0.0.1:11112").ae_title == "ANY-SCP"
    assert str(Peer.parse("h:1:X")) == "X@h:1"


def test_parquet_and_uri_outputs(folder, tmp_path):
    import pyarrow.parquet as pq
    rows = list(csv.DictReader(run("classify", folder, "-q").stdout.splitlines()))
    uri = f"file://{tmp_path}/r.parquet"
    p = run("classify", folder, "-q", "-o", uri)
    assert p.returncode == 0, p.stderr
    table = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert [t["path"] for t in table] == [r["path"] for r in rows]
    assert [f"{t['p_normal']:.6f}" for t in table] == [r["p_normal"] for r in rows]
    again = run("classify", folder, "-q", "-o", uri)  # an object is not replaced unasked
    assert again.returncode == 2 and "exists" in again.stderr
    p = run("classify", folder, "-q", "-o", f"file://{tmp_path}/r.jsonl")
    assert p.returncode == 0 and len((tmp_path / "r.jsonl").read_text().splitlines()) == 4
    bad = run("classify", folder, "-q", "--resume", "-o", uri)  # an object is written whole
    assert bad.returncode == 2 and "--resume works on a local" in bad.stderr, bad.stderr


def test_empty_sources_are_a_usage_error(tmp_path):
    p = run("classify", tmp_path, "-o", tmp_path / "r.csv")
    assert p.returncode == 2 and "no inputs" in p.stderr
    assert not (tmp_path / "r.csv").exists()


def test_a_file_name_that_is_not_utf8_is_a_row_and_resumes(tmp_path):
    import os
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(SAMPLES / "IM-0001-0001.jpeg", folder / "good.jpeg")
    odd = os.fsencode(folder) + b"/bad\xff\xfe.jpeg"
    with open(odd, "wb") as f:
        f.write((SAMPLES / "IM-0003-0001.jpeg").read_bytes())
    out = tmp_path / "out.csv"
    p = run("classify", folder, "-o", out, "-q")
    assert p.returncode == 0, p.stderr
    raw = out.read_bytes()
    assert b"/bad\xff\xfe.jpeg,normal," in raw  # the name's own bytes: recoverable
    p = run("classify", folder, "-o", out, "--resume")
    assert p.returncode == 0, p.stderr
    assert "2 skipped" in p.stderr and out.read_bytes() == raw
    p = run("classify", folder, "-f", "jsonl", "-q")
    names = [json.loads(line)["path"] for line in p.stdout.splitlines()]
    assert os.fsencode(names[0]).endswith(b"/bad\xff\xfe.jpeg")


def test_a_path_that_reads_as_a_formula_is_neutralised_and_resumes(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    name = '=HYPERLINK("x")x.jpeg'
    shutil.copy(SAMPLES / "IM-0001-0001.jpeg", folder / name)
    out = tmp_path / "out.csv"
    p = run("classify", name, "-o", out.name, "-q", cwd=folder)
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader((folder / out.name).open()))
    assert rows[0]["path"] == "'" + name  # no spreadsheet evaluates it
    p = run("classify", name, "-o", out.name, "--resume", cwd=folder)
    assert p.returncode == 0 and "1 skipped" in p.stderr, p.stderr


def test_a_usage_error_leaves_no_log_file(tmp_path):
    log = tmp_path / "run.log"
    v1 = Path(__file__).resolve().parent.parent / "benchmarks" / "models" / "v1.0.0.onnx"
    p = run("classify", SAMPLES, "--log", log, "--model", v1)  # a model without a scope gate
    assert p.returncode == 2 and "no scope gate" in p.stderr
    assert not log.exists()
