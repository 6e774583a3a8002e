"""DICOMweb against a hostile or failing server (loopback, bounded in count and time): an outage
charges no instance, answers are read whatever their media-type parameters, redirects do not
carry results away, and no answer can take unbounded memory or time."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("dicomweb_client")

from helpers import free_port, run_cli  # noqa: E402
from dicomfiles import chest_dicoms  # noqa: E402

from xray_infer import dicomweb  # noqa: E402
from xray_infer.dicomweb import Access, Outcome, TooLarge, Unavailable  # noqa: E402
from xray_infer.errors import InputError  # noqa: E402

JSON = "application/dicom+json"


class Server:
    """A loopback HTTP server whose every answer ``answer(method, path, query)`` chooses:
    ``(status, headers, body)``, the body bytes or an iterable of chunks (sent as they come).
    ``requests`` lists (method, path) of what arrived."""

    def __init__(self, answer):
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                parts = urlsplit(self.path)
                outer.requests.append((self.command, parts.path))
                status, headers, body = answer(self.command, parts.path, parse_qs(parts.query))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if isinstance(body, bytes):
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.end_headers()
                try:
                    for chunk in body:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except OSError:  # the client cut the answer: what the test wants
                    pass

            do_GET = do_POST = _any

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def serve():
    made = []

    def start(answer):
        made.append(Server(answer))
        return made[-1]
    yield start
    for s in made:
        s.close()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Two data sets to store (what the node sends: an SR and an SC stand in as any two)."""
    paths = chest_dicoms(tmp_path_factory.mktemp("stow"), 2, "HOSTILE")
    return [pydicom.dcmread(p) for p in paths]


def referenced(datasets, key="ReferencedSOPSequence"):
    return json.dumps({"00081199" if key == "ReferencedSOPSequence" else "00081198": {
        "vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]},
                               "00081150": {"vr": "UI", "Value": [str(ds.SOPClassUID)]}}
                              for ds in datasets]}}).encode()


# Outages are no instance's fault


@pytest.mark.parametrize("status", [500, 502])
def test_a_server_wide_error_charges_no_instance(serve, results, status):
    server = serve(lambda *_: (status, {}, b"backend down"))
    with pytest.raises(Unavailable, match=f"answered HTTP {status}"):
        dicomweb.store(Access().client(server.base), results)


def test_a_5xx_naming_an_instance_in_its_failed_sequence_is_about_that_instance(serve,
                                                                               results):
    server = serve(lambda *_: (500, {"Content-Type": JSON},
                               referenced(results[:1], "FailedSOPSequence")))
    out = dicomweb.store(Access().client(server.base), results)
    assert out[str(results[0].SOPInstanceUID)][0] is Outcome.RETRY


def test_an_answer_with_media_type_parameters_is_read(serve, results):
    server = serve(lambda *_: (200, {"Content-Type": f"{JSON}; charset=utf-8"},
                               referenced(results)))
    out = dicomweb.store(Access().client(server.base), results)
    assert all(kind is Outcome.STORED for kind, _ in out.values()), out


# Redirects


def test_a_stow_redirect_carries_no_result_away(serve, results):
    elsewhere = serve(lambda *_: (200, {"Content-Type": JSON}, referenced(results)))
    server = serve(lambda *_: (307, {"Location": f"{elsewhere.base}/studies"}, b""))
    with pytest.raises(Unavailable, match="307 Temporary Redirect, a redirect not followed"):
        dicomweb.store(Access().client(server.base), results)
    assert elsewhere.requests == []


# Bounds on what a server sends


def test_a_listing_whose_pages_never_end_is_refused_with_a_usage_error(serve):
    def same_page(method, path, query):  # the same full page whatever the offset
        page = [{"0020000D": {"vr": "UI", "Value": [f"1.2.3.{i}"]}}
                for i in range(dicomweb.PAGE)]
        return 200, {"Content-Type": JSON}, json.dumps(page).encode()
    server = serve(same_page)
    p = run_cli("classify", server.base, "--query", "PatientID=X", timeout=120)
    assert p.returncode == 2, p.stderr
    assert "cannot list: a listing whose pages repeat" in p.stderr and "Traceback" not in p.stderr
    assert len(server.requests) <= 4  # a repeated page gives it away at once


def test_an_answer_of_many_parts_is_cut_before_they_are_parsed(serve):
    part = b"--b\r\nContent-Type: application/dicom\r\n\r\nx\r\n"
    parts = (part for _ in range(100_000))
    server = serve(lambda *_: (200, {"Content-Type": 'multipart/related; type="application/'
                                                     'dicom"; boundary=b'}, parts))
    t0 = time.monotonic()
    with pytest.raises(InputError, match=f"more than {dicomweb.MAX_PARTS} parts"):
        dicomweb.retrieve(Access().client(server.base), f"{server.base}/studies/1/series/2/"
                                                        f"instances/3")
    assert time.monotonic() - t0 < 30


def test_an_answer_that_trickles_is_cut_at_its_deadline(serve, monkeypatch):
    monkeypatch.setattr(dicomweb.access, "ANSWER_DEADLINE", 1.0)

    def trickle():
        pace = threading.Event()  # never set: the server's pace, a byte every 0.1 s
        yield b"--b\r\nContent-Type: application/dicom\r\n\r\n"
        for _ in range(60):  # never idle long enough for a read timeout
            pace.wait(0.1)
            yield b"x"
    server = serve(lambda *_: (200, {"Content-Type": "multipart/related; boundary=b"},
                               trickle()))
    t0 = time.monotonic()
    with pytest.raises(InputError, match="still arriving after 1 s"):
        dicomweb.retrieve(Access().client(server.base), f"{server.base}/studies/1/series/2/"
                                                        f"instances/3")
    assert time.monotonic() - t0 < 4


def test_a_listing_is_scored_as_it_is_listed_and_one_that_breaks_off_keeps_its_rows(serve,
                                                                                     tmp_path):
    """Two studies match; the second's listing waits (up to 60 s) for the first's first instance
    to be retrieved, then fails. Listed up front, nothing would be retrieved before it; streamed,
    the first study's instances are scored, their rows written, and the run ends with a usage
    error that says how far it got."""
    files = chest_dicoms(tmp_path / "dcm", 2, "STREAM")
    blobs = {str(pydicom.dcmread(f).SOPInstanceUID): f.read_bytes() for f in files}
    retrieved = threading.Event()
    waited = []

    def answer(method, path, query):
        if path.endswith("/studies"):
            rows = [{"0020000D": {"vr": "UI", "Value": [uid]}} for uid in ("1.2.3", "1.2.4")]
            return 200, {"Content-Type": JSON}, json.dumps(rows).encode()
        if path.endswith("/studies/1.2.3/instances"):
            rows = [{"00080018": {"vr": "UI", "Value": [uid]},
                     "0020000E": {"vr": "UI", "Value": ["1.2.3.1"]},
                     "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.1.1"]}}
                    for uid in blobs]
            return 200, {"Content-Type": JSON}, json.dumps(rows).encode()
        if path.endswith("/studies/1.2.4/instances"):
            waited.append(retrieved.wait(60))
            return 500, {}, b"the archive behind this proxy is down"
        retrieved.set()
        blob = blobs[path.rsplit("/", 1)[1]]
        body = (b"--b\r\nContent-Type: application/dicom\r\n\r\n" + blob + b"\r\n--b--\r\n")
        return 200, {"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'}, \
            body
    server = serve(answer)
    p = run_cli("classify", server.base, "--query", "PatientID=STREAM", "--format", "jsonl",
                "--batch-size", "1", "--workers", "1", "-o", tmp_path / "rows.jsonl", timeout=300)
    assert waited == [True], "the first study was not scored while the second was listed"
    assert p.returncode == 2, p.stderr
    assert "stopped after 2 inputs" in p.stderr and "cannot list: HTTP 500" in p.stderr
    assert "rows written so far are complete" in p.stderr and "Traceback" not in p.stderr
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert sorted(r["path"].rsplit("/", 1)[1] for r in rows) == sorted(blobs)
    assert all(r["status"] == "classified" for r in rows), rows


def test_a_listing_past_its_bounds_is_too_large(serve, monkeypatch):
    monkeypatch.setattr(dicomweb.reading, "MAX_INSTANCES", 150)

    def instances(method, path, query):
        offset = int(query.get("offset", ["0"])[0])
        page = [{"00080018": {"vr": "UI", "Value": [f"1.2.{offset + i}"]}}
                for i in range(dicomweb.PAGE)]
        return 200, {"Content-Type": JSON}, json.dumps(page).encode()
    server = serve(instances)
    address = dicomweb.Address.parse(f"{server.base}/studies/1.2")
    with pytest.raises(TooLarge, match="more than 150 instances"):
        list(dicomweb.list_instances(Access().client(server.base), address))


# What a message may echo


@pytest.mark.parametrize("command", [["classify"], ["listen", "--port", "11112", "--allow",
                                                    "A@127.0.0.1", "--forward"]])
def test_a_url_carrying_a_token_is_refused_without_echoing_it(command):
    secret = "s3cr3t-t0ken"
    url = f"https://pacs.example/dicom-web/studies/1.2?access_token={secret}"
    p = run_cli(*command, url)
    assert p.returncode == 2 and "has no query or fragment" in p.stderr, p.stderr
    assert secret not in p.stderr and "https://pacs.example/dicom-web/studies/1.2" in p.stderr
    p = run_cli(*command, f"https://user:{secret}@pacs.example/dicom-web")
    assert p.returncode == 2 and secret not in p.stderr
    assert "--forward-auth" in p.stderr and "--dicomweb-auth" in p.stderr


# Ctrl-C


def test_ctrl_c_stops_classify_while_a_server_trickles_its_answer(serve, tmp_path):
    import signal
    import subprocess
    import sys

    from helpers import as_foreground
    started = threading.Event()

    def answer(method, path, query):
        if "/instances/" in path and method == "GET" and not path.endswith("/instances"):
            started.set()
            return 200, {"Content-Type": "multipart/related; boundary=b"}, trickle()
        uid = {"00080018": {"vr": "UI", "Value": ["1.2.3.4"]},
               "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.1.1"]},
               "0020000E": {"vr": "UI", "Value": ["1.2.3"]}}
        return 200, {"Content-Type": JSON}, json.dumps([uid]).encode()

    def trickle():
        pace = threading.Event()  # never set: a byte a second, for ten minutes
        yield b"--b\r\nContent-Type: application/dicom\r\n\r\n"
        for _ in range(600):
            pace.wait(1.0)
            yield b"x"
    server = serve(answer)
    proc = subprocess.Popen([sys.executable, "-m", "xray_infer", "classify",
                             f"{server.base}/studies/1.2", "-o", str(tmp_path / "out.csv")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_foreground)
    try:
        assert started.wait(120), "the instance was never asked for"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert time.monotonic() - t0 < 15, "Ctrl-C waited for the trickle"
        assert "interrupted" in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
