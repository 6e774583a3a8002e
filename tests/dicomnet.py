"""Helpers for the DICOM node tests: instances to send, the node as a process, the sender, and
a pynetdicom Storage SCP as a destination whose answers a test chooses."""
import signal
import time
import struct
import socket
import select
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import JPEGLSLossless, RLELossless, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation, Verification
from dicomfiles import chest_dicoms  # noqa: F401 (the node tests import it from here)

from helpers import wait_for  # noqa: F401 (the node tests import it from here)
from orthanc import free_port

NODE_AET = "XRAYINFER"
DX = DigitalXRayImageStorageForPresentation


class NodeProcess:
    def __init__(self, folder, forward_port, forward_aet="ORTHANC", port=None, extra=(),
                 allow=("XRAYINFER@127.0.0.1", "ORTHANC@localhost"), metrics=False):
        self.port = port or free_port()
        self.metrics_port = free_port() if metrics else None
        if metrics:
            extra = (*extra, "--metrics-port", self.metrics_port)
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.spool = Path(folder) / "spool"
        self.log = Path(folder) / "node.log"
        self.args = [sys.executable, "-m", "xray_infer", "listen", "--host", "127.0.0.1",
                     "--port", str(self.port), "--ae-title", NODE_AET, "--forward",
                     forward_port if isinstance(forward_port, str)  # a DICOMweb URL
                     else f"127.0.0.1:{forward_port}:{forward_aet}", "--spool", str(self.spool),
                     "--batch-size", "4", *[f"--allow={a}" for a in allow], *map(str, extra)]
        self.proc = None

    def start(self):
        self.out = open(self.log, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self.out, stderr=subprocess.STDOUT)
        # Ready when it says so: a probe connection would hold one of this host's connection
        # slots until the node's ACSE timeout ends it.
        wait_for(lambda: self.proc.poll() is not None or "listening as" in self.log.read_text(),
                 timeout=120, what="the node listening")
        assert self.proc.poll() is None, self.log.read_text()
        return self

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)
        return self.proc.returncode

    def spooled(self):
        return sorted((self.spool / "incoming").glob("*.dcm"))


def send(paths, port, aet, *options):
    """``xray-infer send`` as a process; ``options`` such as ``--ae-title EVIL``."""
    return subprocess.run([sys.executable, "-m", "xray_infer", "send", *map(str, paths), "--to",
                           f"127.0.0.1:{port}:{aet}", *map(str, options)], capture_output=True,
                          text=True, timeout=600)


def dcmtk(tool):
    """The path of dcmtk's ``tool`` (pynetdicom installs apps of the same names), or None."""
    import shutil
    for folder in ("/usr/bin", "/usr/local/bin"):
        path = shutil.which(tool, path=folder)
        if path:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
            if "dcmtk" in out.stdout.lower():
                return path
    return None




class Destination:
    """A Storage SCP in this process (pynetdicom): keeps what it stores, and answers a C-STORE
    with ``answer(dataset)``'s status (0x0000 when None). ``abort_after``: abort the
    association once that many instances arrived on it."""

    def __init__(self, aet="DEST", answer=None, abort_after=None, port=None, abort_on=None):
        self.aet, self.port, self.answer = aet, port or free_port(), answer
        self.abort_after, self.abort_on = abort_after, abort_on
        self.stored, self.calls, self._lock = [], [], threading.Lock()
        self._per_assoc = {}
        ae = AE(ae_title=aet)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event):
        ds = event.dataset
        with self._lock:
            self.calls.append(ds)
            n = self._per_assoc[event.assoc] = self._per_assoc.get(event.assoc, 0) + 1
        if (self.abort_after is not None and n > self.abort_after) or \
                (self.abort_on is not None and self.abort_on(ds)):
            event.assoc.abort()
            return 0xA700
        status = self.answer(ds) if self.answer else None
        if status is None:
            with self._lock:
                self.stored.append(ds)
            return 0x0000
        return status

    def patients(self, modality):
        with self._lock:
            return [str(d.PatientID) for d in self.stored if d.Modality == modality]

    def close(self):
        self.server.shutdown()


def status(code, comment=""):
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment
    return ds


def dataset(tmp_path, patient="SEC", **changes):
    """A valid DX instance of a sample scan; ``changes`` set attributes (None deletes one)."""
    ds = pydicom.dcmread(chest_dicoms(tmp_path / generate_uid()[-12:], 1, patient)[0])
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def ae(title="XRAYINFER"):
    a = AE(ae_title=title)
    a.add_requested_context(DX, pydicom.uid.ExplicitVRLittleEndian)
    a.add_requested_context(DX, RLELossless)
    a.add_requested_context(Verification)
    a.acse_timeout = a.dimse_timeout = a.network_timeout = 30
    return a


def store(datasets, port, calling="XRAYINFER", called=NODE_AET, bind=None):
    """Send ``datasets`` on one association; their (status, comment) pairs, or "rejected" /
    "no association"."""
    kwargs = {"bind_address": (bind, 0)} if bind else {}
    assoc = ae(calling).associate("127.0.0.1", port, ae_title=called, **kwargs)
    if not assoc.is_established:
        return "rejected" if assoc.is_rejected else "no association"
    out = []
    try:
        for ds in datasets:
            rsp = assoc.send_c_store(ds)
            out.append((int(rsp.Status), str(rsp.get("ErrorComment", ""))) if rsp and "Status"
                       in rsp else (None, ""))
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def log_since(node, mark):
    return node.log.read_text()[mark:]


def peak_rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024


def metric(node, name, **labels):
    """The value of one of the node's metrics (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=30) as r:
        text = r.read().decode()
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    key = f"xray_infer_node_{name}" + (f"{{{selector}}}" if selector else "")
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return 0.0


def passes_later(node, more=3):
    """Wait until the forwarding worker has looked at the spool ``more`` times after now: the
    event after which anything it would do again (a retry, a second delivery) has been done."""
    start = metric(node, "forwarder_passes_total")
    wait_for(lambda: metric(node, "forwarder_passes_total") >= start + more, timeout=60,
             what=f"{more} more passes of the forwarding worker")


# -- hostile peers: raw bytes on a socket ---------------------------------------------------
def associate_rq(calling, called=NODE_AET):
    """The bytes of a valid A-ASSOCIATE-RQ (Verification), as pynetdicom encodes one."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import (A_ASSOCIATE, ImplementationClassUIDNotification,
                                           MaximumLengthNotification)
    from pynetdicom.presentation import build_context
    from pynetdicom.sop_class import Verification
    p = A_ASSOCIATE()
    p.application_context_name = "1.2.840.10008.3.1.1.1"
    p.calling_ae_title, p.called_ae_title = calling, called
    from pynetdicom.transport import AddressInformation
    p.calling_presentation_address = AddressInformation("127.0.0.1", 0)
    p.called_presentation_address = AddressInformation("127.0.0.1", 104)
    cx = build_context(Verification)
    cx.context_id = 1
    p.presentation_context_definition_list = [cx]
    length, impl = MaximumLengthNotification(), ImplementationClassUIDNotification()
    length.maximum_length_received = 16382
    impl.implementation_class_uid = "1.2.3.4"
    p.user_information = [length, impl]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(p)
    return pdu.encode()


class Trickler(threading.Thread):
    """Sends ``data`` one byte every ``every`` seconds from address ``bind`` until the node
    closes the connection or ``limit`` seconds pass; ``closed_after`` is how long it took
    (None: still open at the limit)."""

    def __init__(self, port, data, bind="127.0.0.1", every=0.5, limit=40, sock=None):
        super().__init__(daemon=True)
        self.port, self.data, self.bind, self.every, self.limit = port, data, bind, every, limit
        self.sock, self.closed_after = sock, None

    def run(self):
        start = time.monotonic()
        try:
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10,
                                                     source_address=(self.bind, 0))
            for byte in self.data:
                if time.monotonic() - start > self.limit:
                    return
                readable, _, _ = select.select([self.sock], [], [], self.every)
                if readable and not self.sock.recv(4096):
                    break  # the node closed it
                self.sock.sendall(bytes([byte]))
            else:
                return
        except OSError:  # reset by the node
            pass
        self.closed_after = time.monotonic() - start


def echo(port, calling="XRAYINFER", bind=None):
    a = ae(calling)
    kwargs = {"bind_address": (bind, 0)} if bind else {}
    assoc = a.associate("127.0.0.1", port, ae_title=NODE_AET, **kwargs)
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == 0
    assoc.release()
    return ok


def jpeg_ls_bomb(tmp_path):
    """A 512 x 512 DX whose JPEG-LS frame header declares 16384 x 16384."""
    import jpeg_ls
    stream = bytes(jpeg_ls.encode(np.zeros((512, 512), np.uint8)))
    i = stream.index(b"\xff\xf7")
    stream = stream[:i + 5] + struct.pack(">HH", 16384, 16384) + stream[i + 9:]
    ds = dataset(tmp_path, "JLSBOMB")
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 512, 512, 8, 8, 7
    ds.PixelData = pydicom.encaps.encapsulate([stream])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    return ds
