"""The Ray engine (xray_infer.distributed, ``--engine ray``) on a real local Ray: the same rows
as the in-process engine, bad inputs as error rows, a killed worker replaced without losing or
repeating an input, and clear errors before any work for requests that cannot run."""
import csv
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from xray_infer import Classifier, UsageError, distributed
from xray_infer.inputs import collect_inputs

from helpers import run_cli

pytestmark = pytest.mark.usefixtures("ray_address")


def _bad_files(folder):
    """Inputs that must become error rows, each for its own reason."""
    folder.mkdir()
    (folder / "empty.jpeg").write_bytes(b"")
    (folder / "garbage.png").write_bytes(os.urandom(700))
    good = next((Path(__file__).parent.parent / "xray_infer" / "samples").glob("*.jpeg"))
    (folder / "cut.jpeg").write_bytes(good.read_bytes()[:3000])
    (folder / "notes.dcm").write_text("not a DICOM file")
    (folder / "folder.jpeg").mkdir()
    (folder / "dangling.jpeg").symlink_to(folder / "gone.jpeg")
    return folder


def _same(got, want):
    assert [r.source for r in got] == [r.source for r in want]
    for a, b in zip(got, want):
        assert (a.label, a.status, a.reason, a.scope) == (b.label, b.status, b.reason,
                                                          b.scope), a.source
        if a.ok:
            assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) \
                < 1e-5


def test_fullres_scans_and_corrupt_files_equal_the_in_process_engine(data, tmp_path):
    sources = [str(data / "fullres"), str(_bad_files(tmp_path / "bad"))]
    got = distributed.classify_dataset(sources, recursive=True)
    inputs = collect_inputs(sources, recursive=True).files
    want = Classifier(providers=["CPUExecutionProvider"]).classify(inputs)
    assert len(got) == len(inputs) == 240 + 6
    _same(got, want)
    errors = {Path(r.source).name: r.error for r in got if r.status == "failed"}
    assert set(errors) == {"empty.jpeg", "garbage.png", "cut.jpeg", "notes.dcm", "folder.jpeg",
                           "dangling.jpeg"}
    assert errors["folder.jpeg"] == "is a directory, not an image file"
    assert errors["dangling.jpeg"] == "no such file"


def test_cli_rows_are_identical_to_the_local_engine(ray_address, samples, tmp_path):
    bad = _bad_files(tmp_path / "bad")
    local, remote, table = tmp_path / "local.csv", tmp_path / "ray.csv", tmp_path / "ray.parquet"
    args = [str(samples), str(bad)]
    assert run_cli("classify", *args, "-q", "-o", local).returncode == 1
    for out in (remote, table):
        run = run_cli("classify", *args, "--engine", "ray", "--address", ray_address, "-o", out)
        assert run.returncode == 1, run.stderr  # 1: some inputs failed, each has its row
        assert "6 failed" in run.stderr
    assert remote.read_text() == local.read_text()
    import pyarrow.parquet as pq
    rows = list(csv.DictReader(local.open()))
    parquet = pq.read_table(table).to_pylist()
    assert [r["path"] for r in parquet] == [r["path"] for r in rows]
    for p, c in zip(parquet, rows):
        assert (p["label"] or "", p["error"] or "") == (c["label"], c["error"])
        if p["label"]:
            assert abs(p["p_viral"] - float(c["p_viral"])) < 1e-6


def _actor_pids():
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"MapBatches(ClassifyBatch" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(int(pid))
        except OSError:
            pass
    return pids


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_every_input_appears_once(data, tmp_path):
    scans = sorted((data / "chest_xray" / "test").glob("*/*.jpeg"))
    links = tmp_path / "links"
    links.mkdir()
    for i in range(3000):
        (links / f"{i:05d}.jpeg").symlink_to(scans[i % len(scans)])
    inputs = collect_inputs([links]).files
    rows, killed = [], None
    for r in distributed.iter_results(inputs):
        rows.append(r)
        if len(rows) == 300:
            killed = _actor_pids()[0]
            os.kill(killed, signal.SIGKILL)
    assert killed is not None and killed not in _actor_pids()
    assert [r.source for r in rows] == inputs  # each input once, in order
    assert all(r.status != "failed" for r in rows)  # classified, or the same refusal
    first = {r.source: r.label for r in rows[:len(scans)]}
    assert all(first[inputs[i % len(scans)]] == r.label for i, r in enumerate(rows))


@pytest.mark.parametrize("case", ["empty folder", "missing path", "unreachable address",
                                  "threads", "heatmaps"])
def test_requests_that_cannot_run_fail_before_any_work(case, samples, tmp_path):
    out = tmp_path / "out.csv"
    (tmp_path / "empty").mkdir()
    source, extra, message = {
        "empty folder": (tmp_path / "empty", [], "no inputs"),
        "missing path": (tmp_path / "nothere", [], "no such file or directory"),
        "unreachable address": (samples, ["--address", "127.0.0.1:9"],
                                "cannot reach a Ray cluster at 127.0.0.1:9"),
        "threads": (samples, ["--threads", "2"], "--cpus-per-worker sets"),
        "heatmaps": (samples, ["--heatmaps", str(tmp_path / "h")], "use the local engine"),
    }[case]
    run = run_cli("classify", source, "--engine", "ray", "-o", out, *extra, timeout=60)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert not out.exists()


def test_workers_are_placed_node_by_node():
    # a CPU-only head beside four GPU nodes: GPU workers get a GPU node's CPUs, not a share of
    # the cluster's total (which no node could give them)
    head, gpu = {"CPU": 8.0}, {"CPU": 16.0, "GPU": 1.0}
    assert distributed.place([head] + [gpu] * 4, gpus_per_worker=1.0) == (4, 15.0)
    assert distributed.place([head] + [gpu] * 4, gpus_per_worker=0.5) == (8, 7.5)
    assert distributed.place([{"CPU": 16.0}] * 2, workers=3) == (3, 7.5)
    assert distributed.place([{"CPU": 16.0}] * 2) == (32, 0.94)
    with pytest.raises(UsageError, match="room for 2"):
        distributed.place([{"CPU": 16.0}] * 2, workers=3, cpus_per_worker=10.0)
    with pytest.raises(UsageError, match="room for 4"):
        distributed.place([head] + [gpu] * 4, workers=5, gpus_per_worker=1.0)


def test_worker_plans_that_do_not_fit_the_cluster():
    # the test session's cluster: 2 CPUs, no GPU
    assert distributed.plan() == (2, 0.9)
    assert distributed.plan(1) == (1, 1.8)
    with pytest.raises(UsageError, match="has 0 GPU"):
        distributed.plan(gpus_per_worker=1.0)
    with pytest.raises(UsageError, match="do not fit"):
        distributed.plan(2, 0.0, 2.0)


def test_uris_and_mixed_filesystems(samples, tmp_path):
    got = distributed.classify_dataset([f"file://{samples}"])
    want = Classifier(providers=["CPUExecutionProvider"]).classify(sorted(samples.glob("*.jpeg")))
    assert [r.source for r in got] == [f"file://{r.source}" for r in want]
    assert [r.label for r in got] == [r.label for r in want]
    with pytest.raises(UsageError, match="mix filesystems"):
        distributed.classify_dataset([f"file://{samples}", str(samples)])
    with pytest.raises(UsageError, match="no such file"):
        distributed.classify_dataset([f"file://{tmp_path}/nothere"])


def test_writes_csv_jsonl_and_parquet(samples, tmp_path):
    import json

    import pyarrow.parquet as pq
    counts = {fmt: distributed.classify_dataset([samples], output=tmp_path / f"r.{fmt}")
              for fmt in ("csv", "jsonl", "parquet")}
    n = len(list(samples.glob("*.jpeg")))
    assert set(counts.values()) == {(n, 0, 0)}
    table = pq.read_table(tmp_path / "r.parquet").to_pylist()
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [t["path"] for t in table] == [x["path"] for x in lines]
    assert np.allclose([t["p_normal"] for t in table],
                       [x["probabilities"]["normal"] for x in lines])


def test_resume_sends_only_the_missing_inputs(ray_address, samples, tmp_path):
    out = tmp_path / "r.jsonl"
    scans = sorted(samples.glob("*.jpeg"))
    ray_cli = ["--engine", "ray", "--address", ray_address, "-o", str(out), "-q"]
    assert run_cli("classify", *scans[:2], *ray_cli).returncode == 0
    run = run_cli("classify", samples, *ray_cli, "--resume")
    assert run.returncode == 0, run.stderr
    import json
    paths = [json.loads(x)["path"] for x in out.read_text().splitlines()]
    assert sorted(map(os.path.abspath, paths)) == [str(s) for s in scans]  # each once


def test_an_object_gone_after_listing_stops_the_job_naming_it(samples, tmp_path):
    # URIs are listed, not screened: one that vanished must fail loudly, never drop a row
    gone = f"file://{tmp_path}/gone.jpeg"
    with pytest.raises(FileNotFoundError, match="gone.jpeg"):
        list(distributed.iter_results([f"file://{next(samples.glob('*.jpeg'))}", gone]))


def test_results_written_to_a_uri(samples, tmp_path):
    counts = distributed.classify_dataset([samples], output=f"file://{tmp_path}/r.csv")
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert counts == (len(rows), 0, 0) and len(rows) == len(list(samples.glob("*.jpeg")))
