"""The node forwarding by STOW-RS, with real peers: Orthanc with Debian's DICOMweb plugin on
loopback ports, behind a DICOMweb front in this process that answers 409, 400, 503, a partial
success, or drops the connection mid-upload before it passes requests on, and that serves
HTTPS with client certificates made by openssl (Debian 12's Orthanc 1.10.1 ends with a
segmentation fault on its first HTTPS request, so TLS ends at the front; docs/dicomweb.md)."""
import io
import json
import shutil
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("dicomweb_client")

from dicomnet import NodeProcess, chest_dicoms, send, wait_for  # noqa: E402
from helpers import free_port  # noqa: E402
from orthanc import BINARY, DICOMWEB_PLUGIN, Orthanc  # noqa: E402
from certificates import make_ca, make_leaf  # noqa: E402

FORGED = "FORGED-PHRASE \x1b[2J"
needs_orthanc = pytest.mark.skipif(BINARY is None or DICOMWEB_PLUGIN is None,
                                   reason="Orthanc or its DICOMweb plugin is not installed "
                                          "(Debian: orthanc, orthanc-dicomweb)")


# -- the node: STOW-RS over HTTPS with client certificates ------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki-web")
    make_ca(d, "ca")
    for name in ("orthanc", "client"):
        make_leaf(d, name, "ca")
    return d


@needs_orthanc
def test_node_forwards_by_stow_over_https(tmp_path, pki):
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True).start()
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pki / "orthanc.pem", pki / "orthanc.key")
    tls.load_verify_locations(pki / "ca.pem")
    tls.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no request
    token = "tok-5f2a9c"
    front = Front(orthanc, [], tls=tls, token=token)
    assert front.url.startswith("https://")
    (tmp_path / "token").write_text(f"bearer {token}\n")
    node = NodeProcess(tmp_path / "node", front.url, extra=(
        "--forward-tls-ca", pki / "ca.pem", "--forward-tls-cert", pki / "client.pem",
        "--forward-tls-key", pki / "client.key", "--forward-auth", tmp_path / "token")).start()
    try:
        files = chest_dicoms(tmp_path / "in", 2, "HTTPS-1")
        assert send(files, node.port, "XRAYINFER").returncode == 0
        wait_for(lambda: len(orthanc.find_instances("SR", PatientID="HTTPS-1")) == 2,
                 what="2 SRs in Orthanc by STOW-RS")
        wait_for(lambda: len(orthanc.find_instances("OT", PatientID="HTTPS-1")) == 2,
                 what="2 SCs in Orthanc by STOW-RS")
        wait_for(lambda: not node.spooled(), what="an empty spool")
        assert f"stored by {front.url}" in node.log.read_text()
        assert front.seen == ["pass", "pass"]  # each with the token: 401 otherwise
        assert token not in node.log.read_text()
    finally:
        node.stop()
        front.close()
        orthanc.stop()


# -- the node against a faulty DICOMweb server ------------------------------------------------
class Front:
    """A STOW-RS endpoint in this process: the n-th request gets ``script[n]`` ("pass": handed
    to Orthanc, its answer returned; "drop": the connection closed mid-upload; "partial": 202
    with the first object stored and the second failed; a number: that status, with every
    object in the Failed SOP Sequence; (status, seconds): that status with a Retry-After;
    ("outage", status): that status with no body, as a proxy whose backend is down answers);
    past the script, "pass". ``seen`` and ``times`` (monotonic) record each request.
    ``tls``: an SSLContext to serve HTTPS with; ``token``: the bearer token a request must
    carry (401 otherwise)."""

    def __init__(self, orthanc, script, tls=None, token=None):
        self.orthanc, self.script, self.seen, self.times = orthanc, list(script), [], []
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                if token and self.headers.get("Authorization") != f"Bearer {token}":
                    front.seen.append(401)
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                what = front.script.pop(0) if front.script else "pass"
                front.seen.append(what)
                front.times.append(time.monotonic())
                if what == "drop":  # half the upload read, then gone
                    self.rfile.read(1024)
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                body = read_body(self)
                uids = part_uids(body, self.headers["Content-Type"])
                if what == "pass":
                    return front.relay(self, body)
                if isinstance(what, tuple) and what[0] == "outage":
                    self.send_response(what[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status, wait = (what if isinstance(what, tuple) else
                                (202 if what == "partial" else what, None))
                answer = {"00081198": seq([ref(u, failure=0xA700) for u in
                                           (uids[1:] if what == "partial" else uids)])}
                if what == "partial":
                    answer["00081199"] = seq([ref(uids[0])])
                data = json.dumps(answer).encode()
                self.send_response(status, FORGED)  # a reason phrase the log must not carry
                if wait is not None:
                    self.send_header("Retry-After", str(wait))
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def relay(self, handler, body):
        import urllib.request
        req = urllib.request.Request(f"{self.orthanc.dicomweb}/studies", data=body,
                                     method="POST",
                                     headers={"Content-Type": handler.headers["Content-Type"],
                                              "Accept": "application/dicom+json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            status, data = resp.status, resp.read()
            kind = resp.headers.get("Content-Type", "application/dicom+json")
        handler.send_response(status)
        handler.send_header("Content-Type", kind)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def read_body(handler):
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers["Content-Length"]))


def part_uids(body, content_type):
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    uids = []
    for part in body.split(b"--" + boundary)[1:-1]:
        data = part.split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n")
        uids.append(str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                        .SOPInstanceUID))
    return uids


def seq(items):
    return {"vr": "SQ", "Value": items}


def ref(uid, failure=None):
    item = {"00081155": {"vr": "UI", "Value": [uid]}}
    if failure is not None:
        item["00081197"] = {"vr": "US", "Value": [failure]}
    return item


@needs_orthanc
def test_node_keeps_each_instance_until_stow_confirms_it(tmp_path):
    """503 holds the spool and costs nothing; a dropped upload and a partial success are
    retried until both objects are stored; 409 and 400 are refusals, and the third refusal
    (--max-refusals 3) quarantines the instance."""
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True).start()
    front = Front(orthanc, [503, "drop", "partial", "pass", 409, 400, 409])
    node = NodeProcess(tmp_path / "node", front.url, extra=("--max-refusals", 3,
                                                            "--batch-size", 1)).start()
    try:
        [first] = chest_dicoms(tmp_path / "a", 1, "FAULT-1")
        assert send([first], node.port, "XRAYINFER").returncode == 0
        wait_for(lambda: len(orthanc.find_instances("SR", PatientID="FAULT-1")) == 1
                 and len(orthanc.find_instances("OT", PatientID="FAULT-1")) == 1,
                 what="the first instance's SR and SC stored")
        wait_for(lambda: not node.spooled(), what="the first instance out of the spool")
        assert front.seen == [503, "drop", "partial", "pass"]
        log = node.log.read_text()
        assert "answered HTTP 503 Service Unavailable" in log and "FORGED" not in log
        assert "dropped the connection mid-request" in log  # the server's state: no charge
        assert "refused the results: failure reason 0xA700" in log
        assert not list((node.spool / "failed").glob("*.dcm"))

        [second] = chest_dicoms(tmp_path / "b", 1, "FAULT-2")
        assert send([second], node.port, "XRAYINFER").returncode == 0
        wait_for(lambda: list((node.spool / "failed").glob("*.dcm")), what="quarantine")
        assert front.seen[4:] == [409, 400, 409]
        assert "refused the results: HTTP 409, failure reason 0xA700" in node.log.read_text()
        assert "refused the results: HTTP 400, failure reason 0xA700" in node.log.read_text()
        assert "(3 times)" in node.log.read_text()
        assert not node.spooled()
        assert not orthanc.find_instances("SR", PatientID="FAULT-2")
    finally:
        node.stop()
        front.close()
        orthanc.stop()


@needs_orthanc
@pytest.mark.slow
def test_a_server_that_cannot_be_reached_costs_no_classification_until_it_can(tmp_path):
    """Nothing listens at the DICOMweb URL: the instance is classified once, then each backoff
    tries a TCP connection and classifies nothing; once the server listens, it is delivered."""
    from dicomnet import metric
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True)  # its port chosen, not started
    node = NodeProcess(tmp_path / "node", orthanc.dicomweb, metrics=True).start()
    try:
        [scan] = chest_dicoms(tmp_path / "a", 1, "DOWN-1")
        assert send([scan], node.port, "XRAYINFER").returncode == 0
        wait_for(lambda: node.log.read_text().count("still cannot be reached") >= 2,
                 timeout=120, what="two backoffs that found the server still down")
        assert metric(node, "classified_total") == 1
        orthanc.start()
        wait_for(lambda: len(orthanc.find_instances("SR", PatientID="DOWN-1")) == 1,
                 timeout=180, what="the SR stored once the server listens")
        wait_for(lambda: not node.spooled(), what="the instance out of the spool")
        assert metric(node, "forwarded_total") == 1
    finally:
        node.stop()
        orthanc.stop()


@needs_orthanc
def test_a_busy_server_gets_the_time_it_asks_for(tmp_path):
    """503 with Retry-After 5: the node sends again no sooner (its own backoff would be 2 s),
    the instance is charged nothing, and it is delivered."""
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True).start()
    front = Front(orthanc, [(503, 5)])
    node = NodeProcess(tmp_path / "node", front.url).start()
    try:
        [scan] = chest_dicoms(tmp_path / "a", 1, "BUSY-1")
        assert send([scan], node.port, "XRAYINFER").returncode == 0
        wait_for(lambda: len(orthanc.find_instances("SR", PatientID="BUSY-1")) == 1,
                 timeout=120, what="the SR stored after the wait asked for")
        wait_for(lambda: not node.spooled(), what="the instance out of the spool")
        assert front.seen == [(503, 5), "pass"]
        assert front.times[1] - front.times[0] >= 5.0  # a bound below: no machine is too fast
        log = node.log.read_text()
        assert "answered HTTP 503 Service Unavailable; it asked for 5 s" in log
        assert "refused the results" not in log
        assert not list((node.spool / "failed").glob("*.dcm"))
    finally:
        node.stop()
        front.close()
        orthanc.stop()


@needs_orthanc
def test_a_backend_outage_quarantines_nothing_and_health_says_so(tmp_path):
    """500 and 502 for every request (a proxy whose backend is down): no instance is charged,
    so none is quarantined whatever --max-refusals says; /healthz turns 503 once nothing has
    moved for --stall-timeout, and says how many wait in failed/; delivery resumes by itself."""
    import urllib.error
    import urllib.request

    from dicomnet import metric
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True).start()
    outage = [("outage", 500), ("outage", 502), ("outage", 500), ("outage", 500)]
    front = Front(orthanc, outage)
    node = NodeProcess(tmp_path / "node", front.url, metrics=True,
                       extra=("--max-refusals", 2, "--stall-timeout", 1)).start()

    def health():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/healthz",
                                        timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
    try:
        [scan] = chest_dicoms(tmp_path / "a", 1, "OUTAGE-1")
        assert send([scan], node.port, "XRAYINFER").returncode == 0
        wait_for(lambda: health()[0] == 503, timeout=60, what="/healthz 503 during the outage")
        assert health()[1]["quarantined"] == 0
        wait_for(lambda: len(orthanc.find_instances("SR", PatientID="OUTAGE-1")) == 1,
                 timeout=180, what="delivered once the backend is back")
        wait_for(lambda: health()[0] == 200, what="/healthz 200 again")
        assert front.seen == [*outage, "pass"]
        assert not list((node.spool / "failed").glob("*.dcm"))
        assert metric(node, "quarantine_depth") == 0 and metric(node, "retried_total") == 0
        assert "answered HTTP 502 Bad Gateway" in node.log.read_text()
    finally:
        node.stop()
        front.close()
        orthanc.stop()
