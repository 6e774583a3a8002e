"""A real Orthanc PACS for the node tests: started from Debian's ``Orthanc`` binary with a
generated configuration on free loopback ports, driven through its REST API; with
``dicomweb=True`` Debian's DICOMweb plugin serves ``/dicom-web``, optionally behind HTTP basic
authentication (``users``). Not over HTTPS: Debian 12's Orthanc 1.10.1 ends with a segmentation
fault on its first HTTPS request (test_dicomweb.py ends TLS in front of it)."""
import base64
import json
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from helpers import free_port, wait_for  # noqa: F401 (free_port: imported from here too)

BINARY = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists()
                                     else None)
DICOMWEB_PLUGIN = next((p for p in ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
                                    "/usr/lib/orthanc/libOrthancDicomWeb.so")
                        if Path(p).exists()), None)


def wait_port(port, timeout=60, proc=None):
    def listening():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    wait_for(listening, timeout, f"a listener on port {port}")


class Orthanc:
    def __init__(self, folder, modalities=None, aet="ORTHANC", dicom_port=None, extra=None,
                 dicomweb=False, users=None):
        """``users``: {name: password} for HTTP basic authentication."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.aet, self.http_port = aet, free_port()
        self.dicom_port = dicom_port or free_port()
        self.users = users or {}
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.base}/dicom-web"
        web = {}
        if dicomweb:
            web = {"Plugins": [DICOMWEB_PLUGIN],
                   "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
        if users:
            web.update(AuthenticationEnabled=True, RegisteredUsers=users)
        config = {"Name": "xray-infer-tests", "StorageDirectory": str(self.folder / "db"),
                  "IndexDirectory": str(self.folder / "db"), "HttpPort": self.http_port,
                  "DicomPort": self.dicom_port, "DicomAet": aet, "DicomCheckCalledAet": True,
                  "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                  "DicomModalities": modalities or {}, "Plugins": [], "StableAge": 1,
                  "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True, **web,
                  **(extra or {})}
        self.config = self.folder / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=1))
        self.proc = None

    def start(self):
        self.log = open(self.folder / "orthanc.log", "ab")
        self.proc = subprocess.Popen([BINARY, str(self.config)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_port(self.http_port, proc=self.proc)

        def answers():
            try:
                self.get("/system")
                return True
            except (urllib.error.URLError, ConnectionError):
                return False
        wait_for(answers, 30, "Orthanc's REST API answering")
        wait_port(self.dicom_port, proc=self.proc)
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(20)
        self.proc = None

    # -- REST ----------------------------------------------------------------------------------
    def _call(self, method, path, body=None, raw=False):
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.base}{path}", data=data, method=method)
        if self.users:
            user, password = next(iter(self.users.items()))
            req.add_header("Authorization", "Basic " + base64.b64encode(
                f"{user}:{password}".encode()).decode())
        with urllib.request.urlopen(req, timeout=120) as resp:
            out = resp.read()
        return out if raw else json.loads(out)

    def get(self, path, raw=False):
        return self._call("GET", path, raw=raw)

    def post(self, path, body):
        return self._call("POST", path, body)

    def upload(self, path):
        return self.post("/instances", Path(path).read_bytes())["ID"]

    def find_instances(self, modality, **query):
        """Orthanc ids of the instances of series with ``modality`` matching ``query``."""
        series = self.post("/tools/find", {"Level": "Series", "Expand": True,
                                           "Query": {"Modality": modality, **query}})
        return [i for s in series for i in s["Instances"]]

    def file(self, instance_id):
        return self.get(f"/instances/{instance_id}/file", raw=True)
