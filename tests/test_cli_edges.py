"""The command line's rough edges: paths it writes checked before the model loads, a closed
standard output, names that are not UTF-8, inputs recognised by content, skipped files
counted, and resume that cannot duplicate a row."""
import csv
import io
import json
import os
import shutil
import subprocess
import sys

import pydicom
import pytest

from dicomnet import chest_dicoms
from helpers import SAMPLES, as_foreground
from helpers import run_cli as run


def rows(text):
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("option, value, says", [
    ("--log", "missing/run.log", "does not exist"),
    ("-o", "missing/out.csv", "does not exist"),
    ("-o", "/proc/out.csv", "cannot write in /proc"),
    ("--report", "missing/page.html", "does not exist"),
    ("--dicom-out", "ftp://host/results", "not a URL"),  # http(s): DICOMweb, see test_dicomweb
    ("--heatmaps", "https://host/overlays", "not a URL"),
    ("--log", "http://host/log", "not a URL"),
    ("-o", "http://host/out.csv", "cannot write there"),
    ("--heatmaps", "a-file/overlays", "is a file"),
])
def test_every_path_a_run_writes_is_checked_before_the_model_loads(tmp_path, option, value,
                                                                   says):
    (tmp_path / "a-file").write_text("")
    p = run("classify", SAMPLES[0], option, value, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and says in p.stderr and "Traceback" not in p.stderr
    assert sorted(os.listdir(tmp_path)) == ["a-file"]  # nothing made: no "http:" folder


def test_a_closed_standard_output_ends_the_run_quietly(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(3000):  # error rows: far more than a pipe holds, so writes outlive `head`
        (folder / f"{i:05d}.jpeg").write_bytes(b"")
    p = subprocess.run(f"{sys.executable} -m xray_infer classify {folder} | head -2; "
                       f"echo \"status ${{PIPESTATUS[0]}}\" >&2", shell=True,
                       executable="/bin/bash", capture_output=True, text=True, timeout=300)
    assert p.stdout.count("\n") == 2
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
    assert "status 141" in p.stderr


def test_heatmaps_are_written_for_names_that_are_not_utf8(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    name = os.fsencode(folder) + b"/scan-\xff\xfe.jpeg"
    shutil.copy(SAMPLES[0], name)
    shutil.copy(SAMPLES[1], folder / "other.jpeg")
    p = run("classify", folder, "--heatmaps", tmp_path / "overlays", "-q", errors="surrogateescape")
    assert p.returncode == 0, p.stderr
    written = sorted(os.listdir(os.fsencode(tmp_path / "overlays")))
    assert written == [b"other.png", b"scan-\xff\xfe.png"]


def dicom_folder(tmp_path):
    """A folder as archives and exports leave them: DICOM named by UID alone, DICOM without
    its preamble, a JPEG named .dcm, a note and an empty sub-folder."""
    folder = tmp_path / "archive"
    folder.mkdir()
    made = chest_dicoms(tmp_path / "made", 2, "CONTENT")
    shutil.copy(made[0], folder / pydicom.dcmread(made[0]).SOPInstanceUID)
    ds = pydicom.dcmread(made[1])
    ds.preamble = None
    del ds.file_meta
    with open(folder / "bare-instance", "wb") as f:
        pydicom.dcmwrite(f, ds, enforce_file_format=False, implicit_vr=True)
    shutil.copy(SAMPLES[2], folder / "photo.dcm")
    (folder / "README").write_text("exported by a viewer")
    (folder / "empty-sub").mkdir()
    return folder


def test_inputs_are_recognised_by_content_and_skipped_files_are_counted(tmp_path):
    folder = dicom_folder(tmp_path)
    log = tmp_path / "run.log"
    p = run("classify", folder, "-f", "jsonl", "--log", log)
    assert p.returncode == 0, p.stderr
    got = {os.path.basename(r["path"]): r for r in map(json.loads, p.stdout.splitlines())}
    assert sorted(got) == sorted([pydicom.dcmread(f).SOPInstanceUID for f in folder.iterdir()
                                  if f.name not in ("README", "photo.dcm", "bare-instance",
                                                    "empty-sub")] +
                                 ["bare-instance", "photo.dcm"])
    assert all(r["status"] == "classified" for r in got.values()), got
    assert "1 file(s) in folders skipped (1 not an image or DICOM file" in p.stderr
    assert "README: skipped: not an image or DICOM file" in log.read_text()
    named = run("classify", folder / "photo.dcm", "-q")  # no advice to pass force=True
    assert named.returncode == 0 and "force" not in named.stderr


def test_a_file_that_is_neither_says_so_whatever_its_name(tmp_path):
    fake = tmp_path / "scan.dcm"
    fake.write_bytes(b"this is text, not DICOM" * 20)
    p = run("classify", fake, "-f", "jsonl", "-q")
    error = json.loads(p.stdout)["error"]
    assert p.returncode == 1 and "named as DICOM, but it holds no DICOM data set" in error
    assert "force" not in error


def test_no_inputs_suggests_recursive_and_symlinked_folders_are_reported(tmp_path):
    top = tmp_path / "top"
    (top / "patient1").mkdir(parents=True)
    shutil.copy(SAMPLES[0], top / "patient1")
    p = run("classify", top)
    assert p.returncode == 2 and "1 sub-folder not searched: -r descends" in p.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(SAMPLES[1], elsewhere)
    os.symlink(elsewhere, top / "linked")
    p = run("classify", top, "-r")
    assert p.returncode == 0 and len(rows(p.stdout)) == 1, p.stderr
    assert "1 a symbolic link to a folder" in p.stderr


def test_resume_from_another_folder_is_refused_rather_than_duplicated(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for f in SAMPLES[:3]:
        shutil.copy(f, scans)
    sub = tmp_path / "sub"
    sub.mkdir()
    out = tmp_path / "out.csv"
    assert run("classify", "scans/" + SAMPLES[0].name, "-o", out, "-q",
               cwd=tmp_path).returncode == 0
    before = out.read_text()
    p = run("classify", "../scans", "-o", out, "--resume", cwd=sub)
    assert p.returncode == 2 and "relative to the folder the earlier run started in" in p.stderr
    assert out.read_text() == before
    p = run("classify", "scans", "-o", out, "--resume", "-q", cwd=tmp_path)  # from there
    assert p.returncode == 0, p.stderr
    paths = [r["path"] for r in rows(out.read_text())]
    assert len(paths) == 3 and len(set(paths)) == 3


@pytest.mark.parametrize("form", ["dotdot", "symlink", "absolute"])
def test_resume_never_writes_an_input_twice_however_its_path_is_written(tmp_path, form):
    data = tmp_path / "data" / "NORMAL"
    data.mkdir(parents=True)
    for f in SAMPLES[:2]:
        shutil.copy(f, data)
    runs = tmp_path / "runs"
    runs.mkdir()
    out = runs / "out.csv"
    first = {"dotdot": ("../data/NORMAL", runs),  # the defect: written from beside the data
             "symlink": ("linked/NORMAL", tmp_path),
             "absolute": (str(data), runs)}[form]
    if form == "symlink":
        os.symlink(tmp_path / "data", tmp_path / "linked")
    assert run("classify", first[0], "-o", out, "-q", cwd=first[1]).returncode == 0
    before = out.read_text()
    p = run("classify", "data/NORMAL", "-o", "runs/out.csv", "--resume", "-q", cwd=tmp_path)
    if form == "dotdot":  # its rows cannot be matched from here: refused, naming both forms
        assert p.returncode == 2, p.stderr
        assert "../data/NORMAL/" in p.stderr and str(data) in p.stderr
        assert out.read_text() == before
    else:  # the same files: nothing scored again
        assert p.returncode == 0, p.stderr
        assert out.read_text() == before
    assert len(rows(out.read_text())) == 2


def test_parquet_output_resumes_and_retries(tmp_path):
    import pyarrow.parquet as pq
    scans = tmp_path / "scans"
    scans.mkdir()
    for f in SAMPLES[:2]:
        shutil.copy(f, scans)
    (scans / "broken.jpeg").write_bytes(b"\xff\xd8\xff")
    out = tmp_path / "out.parquet"
    assert run("classify", scans, "-o", out, "-q").returncode == 1
    for f in SAMPLES[2:4]:
        shutil.copy(f, scans)
    p = run("classify", scans, "-o", out, "--resume")
    assert p.returncode == 0 and "3 skipped" in p.stderr, p.stderr
    table = pq.read_table(out).to_pylist()
    assert len(table) == 5 and len({t["path"] for t in table}) == 5
    shutil.copy(SAMPLES[4], scans / "broken.jpeg")  # repaired
    p = run("classify", scans, "-o", out, "--resume", "--retry-failed")
    assert p.returncode == 0, p.stderr
    table = pq.read_table(out).to_pylist()
    assert len(table) == 5 and all(t["status"] == "classified" for t in table)
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


@pytest.mark.slow
def test_an_interrupted_runs_page_holds_every_row_written_and_says_it_stopped(tmp_path):
    """SIGINT mid-run with --report: the page has exactly the output's rows and says the run
    stopped early. The output is a named pipe this test stops reading, so the run blocks on it
    long before its 400 rows are out, however fast the machine."""
    import fcntl
    import re
    import signal
    scans = tmp_path / "many"
    scans.mkdir()
    for i in range(400):
        os.symlink(SAMPLES[i % len(SAMPLES)], scans / f"{i:04d}.jpeg")
    out, page = tmp_path / "rows.csv", tmp_path / "page.html"
    os.mkfifo(out)
    proc = subprocess.Popen([sys.executable, "-m", "xray_infer", "classify", str(scans), "-o",
                             str(out), "--overwrite", "--report", str(page), "--batch-size",
                             "4", "-q"], stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_foreground)
    with open(out) as pipe:
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, 4096)
        head = [pipe.readline() for _ in range(13)]  # the header and 12 rows
        proc.send_signal(signal.SIGINT)
        rest = pipe.read()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err, err
    written = rows("".join(head) + rest)
    assert 12 <= len(written) < 400
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>',
                                page.read_text(), re.S).group(1).replace("<\\/", "</"))
    assert [r["path"] for r in data["rows"]] == [r["path"] for r in written]
    assert data["meta"]["interrupted"].startswith("interrupted after")


def test_results_that_reach_no_server_end_with_status_4_and_their_reasons(tmp_path):
    from helpers import free_port
    made = chest_dicoms(tmp_path / "dcm", 2, "UNDELIVERED")
    url = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    p = run("classify", made[0].parent, "--dicom-out", url, timeout=300)
    assert p.returncode == 4, p.stderr
    assert "2 classified" in p.stderr and "2 not written (reasons below)" in p.stderr
    assert "see --log" not in p.stderr
    listed = [ln for ln in p.stderr.splitlines() if "DICOM results not written" in ln]
    assert len(listed) == 2 and all(str(tmp_path) in ln for ln in listed)
    log = tmp_path / "run.log"
    p = run("classify", made[0].parent, "--dicom-out", url, "--log", log, timeout=300)
    assert p.returncode == 4 and f"(reasons in {log})" in p.stderr
    assert log.read_text().count("DICOM results not written") == 2
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    p = run("classify", made[0].parent, broken, "--dicom-out", url, timeout=300)
    assert p.returncode == 5, p.stderr  # a failed input and undelivered results: 1 + 4


def test_the_summary_names_the_model_and_the_variant_that_scored():
    for precision in ("float32", "int8"):
        p = run("classify", SAMPLES[0], "--precision", precision)
        assert p.returncode == 0 and f", {precision})" in p.stderr.splitlines()[-1], p.stderr
        assert "(model " in p.stderr


def test_outputs_of_an_input_named_by_its_uid_keep_the_whole_uid(tmp_path):
    from xray_infer.cli.side_outputs import output_stem
    uid = "1.2.826.0.1.3680043.8.498.12345"
    assert output_stem(f"/scans/{uid}") == uid
    assert output_stem(f"/scans/{uid}.dcm") == uid
    assert output_stem("/scans/IM-0001.jpeg") == "IM-0001"
    assert output_stem(f"https://pacs/dicom-web/studies/1.2/series/1.3/instances/{uid}") == uid
    made = chest_dicoms(tmp_path / "made", 1, "UIDNAME")[0]
    named = tmp_path / "in" / uid
    named.parent.mkdir()
    shutil.copy(made, named)
    p = run("classify", named.parent, "--dicom-out", tmp_path / "out", "--heatmaps",
            tmp_path / "maps")
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == [f"{uid}.SC.dcm",
                                                                     f"{uid}.SR.dcm"]
    assert [f.name for f in (tmp_path / "maps").iterdir()] == [f"{uid}.png"]


def test_an_existing_report_is_refused_as_an_output_is_and_replaced_whole(tmp_path):
    page = tmp_path / "page.html"
    assert run("classify", *SAMPLES[:3], "--report", page, "-q").returncode == 0
    pictures = page.with_name("page_files")
    assert len(list(pictures.glob("*.jpg"))) == 3
    before = page.read_text()
    p = run("classify", SAMPLES[0], "--report", page, "-q")
    assert p.returncode == 2 and "--report" in p.stderr and "--overwrite" in p.stderr
    assert page.read_text() == before
    assert run("classify", SAMPLES[0], "--report", page, "-q", "--overwrite").returncode == 0
    assert len(list(pictures.glob("*.jpg"))) == 1  # the old page's thumbnails went with it


def test_info_into_a_reader_that_stops_early_ends_quietly():
    for _ in range(5):  # the defect showed 2 runs in 5
        p = subprocess.run(f"{sys.executable} -m xray_infer info | head -3", shell=True,
                           capture_output=True, text=True, timeout=120)
        assert len(p.stdout.splitlines()) == 3 and "Traceback" not in p.stderr, p.stderr


def test_a_run_that_finds_inputs_still_names_the_sub_folders_it_did_not_search(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shutil.copy(SAMPLES[0], tmp_path / name)
    shutil.copy(SAMPLES[1], tmp_path)
    p = run("classify", tmp_path)
    assert p.returncode == 0 and "2 sub-folders not searched (-r descends into them)" in p.stderr
    p = run("classify", tmp_path, "-r")
    assert p.returncode == 0 and "not searched" not in p.stderr and "3 classified" in p.stderr
    p = run("classify", tmp_path / "a" / "missing-folder-name-that-is-empty")
    assert p.returncode != 0
    empty = tmp_path / "empty"
    empty.mkdir()
    p = run("classify", empty)
    assert p.returncode == 2 and f"{empty} holds no images" in p.stderr and "(s)" not in p.stderr


def test_info_says_where_the_int8_figures_were_measured():
    p = run("info", "--precision", "int8")
    assert p.returncode == 0, p.stderr
    text = " ".join(p.stdout.split())
    assert "int8 figures measured at export" in text and "this CPU: the CPU" in text
