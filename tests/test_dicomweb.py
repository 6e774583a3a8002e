"""DICOMweb and IHE AI Results with real peers: ``classify`` against Orthanc with Debian's
DICOMweb plugin, started here on loopback ports behind HTTP basic authentication, and against a
server that declares more than it should. The node over DICOMweb: test_dicomweb_node.py."""
import csv
import io
import json
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("dicomweb_client")

from dicomnet import chest_dicoms  # noqa: E402
from helpers import run_cli  # noqa: E402
from orthanc import BINARY, DICOMWEB_PLUGIN, Orthanc, free_port  # noqa: E402

from xray_infer.dicom_results import FINDINGS  # noqa: E402

needs_orthanc = pytest.mark.skipif(BINARY is None or DICOMWEB_PLUGIN is None,
                                   reason="Orthanc or its DICOMweb plugin is not installed "
                                          "(Debian: orthanc, orthanc-dicomweb)")
PASSWORD = "s3cret-pw-7d1"
AIR_PURPOSE = ("Newcode1", "99IHE", "Processing Algorithm")


def qido(orthanc, path):
    return json.loads(orthanc.get(f"/dicom-web{path}", raw=True) or b"[]")


def results_in(orthanc, modality, study):
    """(series, instance) UIDs of every instance of ``modality`` series in ``study``, by
    QIDO-RS."""
    out = []
    for s in qido(orthanc, f"/studies/{study}/series?Modality={modality}"):
        series = s["0020000E"]["Value"][0]
        out += [(series, i["00080018"]["Value"][0])
                for i in qido(orthanc, f"/studies/{study}/series/{series}/instances")]
    return out


def wado(orthanc, study, series, instance):
    """The instance as WADO-RS returns it (dicomweb-client, with the test's credentials)."""
    import requests
    from dicomweb_client.api import DICOMwebClient
    session = requests.Session()
    session.auth = next(iter(orthanc.users.items()))
    return DICOMwebClient(orthanc.dicomweb, session=session).retrieve_instance(
        study, series, instance)


def sr_finding(sr):
    def walk(items):
        for it in items:
            if it.get("ValueType") == "CODE" and \
                    it.ConceptNameCodeSequence[0].CodeMeaning == "Finding":
                return it.ConceptCodeSequence[0].CodeMeaning
            found = walk(it.get("ContentSequence", []))
            if found:
                return found
    return walk(sr.ContentSequence)


@pytest.fixture(scope="module")
def basic_orthanc(tmp_path_factory):
    folder = tmp_path_factory.mktemp("orthanc-basic")
    if BINARY is None or DICOMWEB_PLUGIN is None:
        pytest.skip("Orthanc or its DICOMweb plugin is not installed")
    orthanc = Orthanc(folder, dicomweb=True, users={"alice": PASSWORD}).start()
    yield orthanc
    orthanc.stop()


@pytest.fixture
def auth_file(tmp_path):
    f = tmp_path / "dicomweb.auth"
    f.write_text(f"basic alice:{PASSWORD}\n")
    f.chmod(0o600)
    return f


# -- IHE AI Results ---------------------------------------------------------------------------
def _equipment(ds):
    items = [i for i in ds.ContributingEquipmentSequence
             if i.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"]
    assert len(items) == 1
    return items[0]


def test_results_name_the_algorithm_as_air_asks(tmp_path):
    sources = chest_dicoms(tmp_path / "in", 1, "AIR-1")
    device = {}
    for precision in ("float32", "int8"):
        out = tmp_path / precision
        p = run_cli("classify", *sources, "--dicom-out", out, "--precision", precision, "-q")
        assert p.returncode == 0, p.stderr
        for kind in ("SR", "SC"):
            ds = pydicom.dcmread(out / f"AIR-1-000.{kind}.dcm")
            item = _equipment(ds)
            code = item.PurposeOfReferenceCodeSequence[0]
            assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == AIR_PURPOSE
            assert item.Manufacturer == "xray-infer" and item.ManufacturerModelName
            assert len(item.SoftwareVersions) == 2
            device.setdefault(precision, set()).add(item.DeviceUID)
            schemes = {s.CodingSchemeDesignator for s in ds.CodingSchemeIdentificationSequence}
            assert {"99XRAYINFER", "99IHE"} <= schemes
            assert ds.StudyInstanceUID == pydicom.dcmread(sources[0]).StudyInstanceUID
    # one model file is one device, in both objects; another variant is another device
    assert len(device["float32"]) == 1 and len(device["int8"]) == 1
    assert device["float32"] != device["int8"]


# -- classify: STOW-RS out, WADO-RS and QIDO-RS in, basic authentication -----------------------
@needs_orthanc
def test_results_stored_twice_are_one_copy_and_read_back(tmp_path, basic_orthanc, auth_file):
    orthanc = basic_orthanc
    sources = chest_dicoms(tmp_path / "in", 3, "WEB-1")
    rows = None
    for _ in range(2):
        p = run_cli("classify", *sources, "--dicom-out", orthanc.dicomweb, "--dicomweb-auth",
                    auth_file, "--log", tmp_path / "run.log")
        assert p.returncode == 0, p.stderr
        assert f"DICOM SR + SC for 3 input(s) stored at {orthanc.dicomweb}" in p.stderr
        rows = {os.path.basename(r["path"]): r for r in csv.DictReader(io.StringIO(p.stdout))}
    for text in (p.stderr, (tmp_path / "run.log").read_text()):
        assert PASSWORD not in text
    study = str(pydicom.dcmread(sources[0]).StudyInstanceUID)
    mine = {str(pydicom.dcmread(s).SOPInstanceUID): os.path.basename(s) for s in sources}
    srs, scs = results_in(orthanc, "SR", study), results_in(orthanc, "OT", study)
    assert len(srs) == 3 and len(scs) == 3  # two runs, one copy: the UIDs are derived
    for series, uid in srs:
        sr = wado(orthanc, study, series, uid)
        source = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0] \
            .ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        assert sr_finding(sr) == FINDINGS[rows[mine[source]]["label"]].meaning
    if shutil.which("dciodvfy"):
        for series, uid in (srs[0], scs[0]):
            f = tmp_path / f"{uid}.dcm"
            wado(orthanc, study, series, uid).save_as(f, enforce_file_format=True)
            v = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True, timeout=60)
            assert not [ln for ln in (v.stdout + v.stderr).splitlines()
                        if ln.startswith("Error")], v.stderr


@needs_orthanc
def test_a_study_url_is_scored_instance_by_instance(tmp_path, basic_orthanc, auth_file):
    orthanc = basic_orthanc
    sources = chest_dicoms(tmp_path / "in", 3, "WEB-2")
    for s in sources:
        orthanc.upload(s)
    local = run_cli("classify", *sources)
    labels = {str(pydicom.dcmread(s).SOPInstanceUID): r["label"] for s, r in
              zip(sources, csv.DictReader(io.StringIO(local.stdout)))}
    study = str(pydicom.dcmread(sources[0]).StudyInstanceUID)
    url = f"{orthanc.dicomweb}/studies/{study}"
    out = tmp_path / "rows.csv"
    # the results go to the same study: a second listing skips them, and --resume the rest
    p = run_cli("classify", url, "-o", out, "--dicomweb-auth", auth_file, "--dicom-out",
                orthanc.dicomweb)
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3
    for r in rows:
        assert r["path"].startswith(url + "/series/") and "/instances/" in r["path"]
        assert r["label"] == labels[r["path"].rsplit("/", 1)[1]]
    again = run_cli("classify", url, "-o", out, "--resume", "--dicomweb-auth", auth_file)
    assert again.returncode == 0, again.stderr
    assert "3 skipped (already in" in again.stderr
    assert "6 DICOMweb instance(s) skipped (6 not an image" in again.stderr
    assert len(list(csv.DictReader(out.open()))) == 3
    # credentials from the environment; a query finds the study by what it holds
    env = {**os.environ, "XRAY_INFER_DICOMWEB_AUTH": f"basic alice:{PASSWORD}"}
    q = run_cli("classify", orthanc.dicomweb, "--query", "PatientID=WEB-2", env=env)
    assert q.returncode == 0, q.stderr
    assert sorted(r["label"] for r in csv.DictReader(io.StringIO(q.stdout))) == \
        sorted(labels.values())


@needs_orthanc
def test_credentials_stay_off_the_command_line_and_out_of_messages(tmp_path, basic_orthanc):
    orthanc = basic_orthanc
    wrong = tmp_path / "wrong.auth"
    wrong.write_text("basic alice:not-the-password\n")
    url = f"{orthanc.dicomweb}/studies/1.2.3"
    p = run_cli("classify", url, "--dicomweb-auth", wrong)
    assert p.returncode == 2 and "cannot list: HTTP 401" in p.stderr
    assert "not-the-password" not in p.stderr
    inline = orthanc.dicomweb.replace("://", f"://alice:{PASSWORD}@") + "/studies/1.2.3"
    for args in ((inline,), (tmp_path, "--dicom-out", inline.rsplit("/studies", 1)[0])):
        p = run_cli("classify", *args)
        assert p.returncode == 2 and "may not carry credentials" in p.stderr
        assert PASSWORD not in p.stderr
    garbled = tmp_path / "garbled.auth"
    garbled.write_text(f"token {PASSWORD}\n")
    p = run_cli("classify", url, "--dicomweb-auth", garbled)
    assert p.returncode == 2 and "'bearer TOKEN' or 'basic USER:PASSWORD'" in p.stderr
    assert PASSWORD not in p.stderr
    p = run_cli("classify", orthanc.dicomweb, "--dicomweb-auth", wrong)
    assert p.returncode == 2 and "--query" in p.stderr


# -- a WADO-RS server in this process -----------------------------------------------------------
class Wado:
    """A study of one series on loopback: ``instances`` maps an instance UID to its file's bytes,
    or to None for one whose answer declares 10 GiB; ``retrieved`` counts reads per UID."""
    study, series = "1.2.3", "1.2.3.4"

    def __init__(self, instances):
        from collections import Counter
        self.retrieved = Counter()
        listing = json.dumps([{"0020000E": {"vr": "UI", "Value": [self.series]},
                               "00080018": {"vr": "UI", "Value": [uid]},
                               "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.1.1"]}}
                              for uid in instances]).encode()
        wado = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                multipart = 'multipart/related; type="application/dicom"; boundary=b'
                if self.path.split("?")[0].endswith("/instances"):
                    body = b"[]" if "offset=" in self.path and "offset=0" not in self.path \
                        else listing
                    kind = "application/dicom+json"
                else:
                    uid = self.path.rsplit("/", 1)[1]
                    wado.retrieved[uid] += 1
                    if instances[uid] is None:
                        self.send_response(200)
                        self.send_header("Content-Type", multipart)
                        self.send_header("Content-Length", str(10 << 30))
                        self.end_headers()
                        return
                    body = (b"--b\r\nContent-Type: application/dicom\r\n\r\n" +
                            instances[uid] + b"\r\n--b--")
                    kind = multipart
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web/studies/" \
                   f"{self.study}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_server_cannot_choose_how_much_memory_a_read_takes(tmp_path):
    """A WADO-RS server declaring a 10 GiB instance: that row fails at once, naming it; the
    listing's other instance is scored."""
    [good] = chest_dicoms(tmp_path / "in", 1, "BIG-1")
    good_uid = str(pydicom.dcmread(good).SOPInstanceUID)
    server = Wado({"9.9.9": None, good_uid: good.read_bytes()})
    try:
        p = run_cli("classify", server.url, "--scope", "off")
        rows = {r["path"].rsplit("/", 1)[1]: r for r in csv.DictReader(io.StringIO(p.stdout))}
        assert p.returncode == 1, p.stderr
        assert "not retrieved: an answer of 10240 MiB" in rows["9.9.9"]["error"]
        assert rows[good_uid]["status"] == "classified"
    finally:
        server.close()


def test_heatmaps_and_dicom_results_come_from_the_bytes_scored(tmp_path):
    """With --heatmaps and --dicom-out, each instance is retrieved once: its side outputs are
    drawn from the bytes that were scored."""
    files = chest_dicoms(tmp_path / "in", 3, "ONCE-1")
    instances = {str(pydicom.dcmread(f).SOPInstanceUID): f.read_bytes() for f in files}
    server = Wado(instances)
    try:
        p = run_cli("classify", server.url, "--heatmaps", tmp_path / "maps", "--dicom-out",
                    tmp_path / "results", "-q")
        assert p.returncode == 0, p.stderr
        assert len(list(csv.DictReader(io.StringIO(p.stdout)))) == 3
        assert len(list((tmp_path / "maps").iterdir())) == 3
        assert len(list((tmp_path / "results").glob("*.dcm"))) == 6
        assert server.retrieved == {uid: 1 for uid in instances}, server.retrieved
    finally:
        server.close()


def test_retry_after_is_read_as_seconds_or_a_date_and_bounded():
    from datetime import datetime, timezone

    from xray_infer.dicomweb import MAX_RETRY_AFTER, retry_after
    now = datetime(2026, 12, 3, 12, 0, 0, tzinfo=timezone.utc)
    assert retry_after("120", now) == 120.0 and retry_after(" 7 ", now) == 7.0
    assert retry_after("Thu, 03 Dec 2026 12:01:30 GMT", now) == 90.0
    assert retry_after("Thu, 03 Dec 2026 11:00:00 GMT", now) == 0.0  # already past
    assert retry_after("99999999", now) == MAX_RETRY_AFTER  # a server cannot park us for days
    for garbled in (None, "", "soon", "-5", "1.5", "Thu, 03 Dec 2026 12:01:30"):
        assert retry_after(garbled, now) is None, garbled


def test_a_server_that_takes_nothing_costs_each_later_input_one_request(tmp_path):
    """--dicom-out to a server answering 503 to everything: the first input's results are tried
    three times, each later input's once (until one is taken); every row is written and each
    input's missing results are counted and logged."""
    posts = []

    class Busy(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            posts.append(self.path)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sources = chest_dicoms(tmp_path / "in", 3, "BUSY-2")
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        log = tmp_path / "run.log"
        p = run_cli("classify", *sources, "--dicom-out", url, "--log", log)
        assert p.returncode == 4, p.stderr  # scored, but no result reached the server
        assert len(list(csv.DictReader(io.StringIO(p.stdout)))) == 3
        assert len(posts) == 3 + 1 + 1, posts
        assert "DICOM SR + SC for 0 input(s) stored at" in p.stderr and "3 not written" in p.stderr
        assert log.read_text().count("DICOM results not written: the DICOMweb server answered "
                                     "HTTP 503 Service Unavailable") == 3
    finally:
        server.shutdown()
        server.server_close()
