"""A DICOM node: receives chest radiographs (C-STORE), classifies them, and forwards the results
(a Structured Report and a Secondary Capture of the heatmap) to a PACS; and the sender used to
feed it. Networking by pynetdicom (the ``dicom`` extra).

Durability: an instance is written to the spool (``incoming/``, atomically) before it is
acknowledged, and leaves the spool only after the destination accepted both results. Result
UIDs are derived from the source instance and the model (``dicom_results.result_uids``), so an
instance scored again after a crash or a failed forward reaches the PACS as the same objects:
each result arrives once.
"""
import logging
import os
import threading
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (ComprehensiveSRStorage, ComputedRadiographyImageStorage,
                                  DigitalXRayImageStorageForPresentation,
                                  DigitalXRayImageStorageForProcessing,
                                  SecondaryCaptureImageStorage)

from .classifier import Classifier
from .decode import decode_bytes, read_image
from .dicom_results import MANUFACTURER, model_digest, results_for
from .errors import InputError
from .peer import Peer  # noqa: F401  (re-exported)
from .preprocess import check_radiograph

log = logging.getLogger("xray_infer.node")

#: Radiograph SOP classes the node classifies (any transfer syntax a decoder handles).
CHEST_CLASSES = (DigitalXRayImageStorageForPresentation, DigitalXRayImageStorageForProcessing,
                 ComputedRadiographyImageStorage, SecondaryCaptureImageStorage)
DEFAULT_AE_TITLE = "XRAYINFER"
#: C-STORE statuses (PS3.4 B.2.3).
SUCCESS, CANNOT_UNDERSTAND, OUT_OF_RESOURCES = 0x0000, 0xC000, 0xA700


def _status(text, code=CANNOT_UNDERSTAND):
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = text[:64]
    return ds


class AssociationError(Exception):
    """The peer refused or dropped the association; names the peer and the reason."""


def _associate(ae, peer):
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        raise AssociationError(f"{peer} rejected the association (check the AE titles: this "
                               f"node calls itself {ae.ae_title}, and called {peer.ae_title})")
    raise AssociationError(f"no association with {peer} (is it running and reachable?)")


def send(paths, peer, ae_title=DEFAULT_AE_TITLE, report=print):
    """C-STORE each file to ``peer``; returns {path: status code or error text}."""
    datasets, outcome = [], {}
    for p in paths:
        try:
            datasets.append((p, dcmread(p)))
        except Exception as e:  # not DICOM, or unreadable
            outcome[p] = f"not sent: unreadable DICOM ({e})"
            report(f"{p}: {outcome[p]}")
    ae = AE(ae_title=ae_title)
    # One presentation context per (SOP class, transfer syntax) pair: a context offering
    # several syntaxes may be accepted with one the data set is not encoded in.
    for sop_class, syntax in sorted({(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
                                     for _, ds in datasets}):
        ae.add_requested_context(sop_class, syntax)
    if not datasets:
        return outcome
    assoc = _associate(ae, peer)
    try:
        for p, ds in datasets:
            try:
                status = assoc.send_c_store(ds)
            except ValueError as e:  # the peer accepted no context for this class and syntax
                outcome[p] = f"not sent: {e}"
                report(f"{p}: {outcome[p]}")
                continue
            code = int(status.Status) if status and "Status" in status else None
            if code is None:
                outcome[p] = "not stored: no response (association dropped)"
            elif code in (SUCCESS, 0xB000, 0xB007, 0xB006):
                outcome[p] = code
            else:
                comment = status.get("ErrorComment", "")
                outcome[p] = f"refused with status 0x{code:04X} {comment}".rstrip()
            report(f"{p}: " + (f"stored (0x{code:04X})" if isinstance(outcome[p], int)
                               else outcome[p]))
    finally:
        if assoc.is_established:
            assoc.release()
    return outcome


class Node:
    """Storage SCP + a worker that classifies the spool and forwards the results."""

    def __init__(self, port, forward, spool, ae_title=DEFAULT_AE_TITLE, host="0.0.0.0",
                 batch_size=8, model=None, retry_seconds=2.0):
        self.port, self.host, self.forward = port, host, forward
        self.ae_title, self.batch_size, self.retry_seconds = ae_title, batch_size, retry_seconds
        self.incoming = Path(spool) / "incoming"
        self.failed = Path(spool) / "failed"
        for d in (self.incoming, self.failed):
            d.mkdir(parents=True, exist_ok=True)
        self.classifier = Classifier(model, heatmaps=True, batch_size=batch_size, workers=2)
        self.digest = model_digest(self.classifier.model_path)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._server = None
        self._worker = None

    # -- receiving -----------------------------------------------------------------------------
    def _on_store(self, event):
        peer = event.assoc.requestor
        who = f"{peer.ae_title}@{peer.address}"
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            uid = str(ds.SOPInstanceUID)
            what = f"{getattr(ds, 'Modality', '?')} {ds.SOPClassUID.name} {uid}"
        except Exception as e:
            log.warning("from %s: unreadable data set (%s); refused", who, e)
            return _status(f"unreadable data set: {e}")
        if str(ds.get("Manufacturer", "")) == MANUFACTURER:
            log.info("from %s: %s is a result of this program; acknowledged, not classified",
                     who, what)
            return SUCCESS
        encoded = event.encoded_dataset()
        try:
            if ds.SOPClassUID not in CHEST_CLASSES:
                raise InputError(uid, f"SOP class {ds.SOPClassUID.name} is not a radiograph "
                                      f"this node classifies")
            check_radiograph(decode_bytes(encoded, uid).pixels, uid)
        except InputError as e:
            log.warning("from %s: %s refused: %s", who, what, e.reason)
            return _status(e.reason)
        except Exception as e:  # a decoder failing in an unforeseen way is still a refusal
            log.warning("from %s: %s refused: %s: %s", who, what, type(e).__name__, e)
            return _status(f"{type(e).__name__}: {e}")
        path = self.incoming / f"{uid}.dcm"
        tmp = self.incoming / f".{uid}.{threading.get_ident()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(encoded)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # durable before the acknowledgement below
        except OSError as e:
            log.error("from %s: %s not spooled: %s", who, what, e)
            return _status(f"spool write failed: {e}", OUT_OF_RESOURCES)
        log.info("from %s: received %s", who, what)
        self._wake.set()
        return SUCCESS

    # -- classifying and forwarding ------------------------------------------------------------
    def _pending(self):
        files = [p for p in self.incoming.glob("*.dcm")]
        return sorted(files, key=lambda p: p.stat().st_mtime)[:self.batch_size]

    def _process(self, batch):
        """Classify a batch and forward its results; returns False when the destination
        could not be reached (the batch stays in the spool)."""
        ready = []
        for path, r in zip(batch, self.classifier.classify([str(p) for p in batch])):
            if not r.ok:
                log.warning("%s: not classified: %s; moved to %s", path.name, r.error,
                            self.failed)
                os.replace(path, self.failed / path.name)
                continue
            try:
                source = dcmread(path, stop_before_pixels=True)
                scan = read_image(path)
                sr, sc = results_for(source, r, scan.pixels, scan.maxval, self.classifier.spec,
                                     self.digest)
            except Exception as e:  # a source the result objects cannot be built from
                log.warning("%s: results not built: %s: %s; moved to %s", path.name,
                            type(e).__name__, e, self.failed)
                os.replace(path, self.failed / path.name)
                continue
            ready.append((path, r, sr, sc))
        if not ready:
            return True
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(ComprehensiveSRStorage, ExplicitVRLittleEndian)
        ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
        try:
            assoc = _associate(ae, self.forward)
        except AssociationError as e:
            log.warning("results of %d instance(s) wait in the spool: %s", len(ready), e)
            return False
        try:
            for path, r, sr, sc in ready:
                codes = []
                for obj in (sr, sc):
                    status = assoc.send_c_store(obj)
                    codes.append(int(status.Status) if status and "Status" in status else None)
                if all(c is not None and (c == SUCCESS or c >> 12 == 0xB) for c in codes):
                    path.unlink()
                    log.info("%s: %s; forwarded SR %s and SC %s to %s", path.stem, r.label,
                             sr.SOPInstanceUID, sc.SOPInstanceUID, self.forward)
                else:
                    log.warning("%s: %s did not accept the results (statuses %s); they stay "
                                "in the spool", path.stem, self.forward, codes)
                    return False
        finally:
            if assoc.is_established:
                assoc.release()
        return True

    def _work(self):
        while not self._stop.is_set():
            batch = self._pending()
            if not batch:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                delivered = self._process(batch)
            except Exception:  # keep the node up; the instances stay in the spool
                log.exception("processing a batch failed; it stays in the spool")
                delivered = False
            if not delivered:
                self._stop.wait(self.retry_seconds)

    # -- running -------------------------------------------------------------------------------
    def start(self):
        """Process what the spool already holds, then accept associations."""
        self._worker = threading.Thread(target=self._work, name="xray-node-worker", daemon=True)
        self._worker.start()
        ae = AE(ae_title=self.ae_title)
        for cx in AllStoragePresentationContexts:
            syntaxes = ALL_TRANSFER_SYNTAXES if cx.abstract_syntax in CHEST_CLASSES else None
            if syntaxes:
                ae.add_supported_context(cx.abstract_syntax, syntaxes)
            else:
                ae.add_supported_context(cx.abstract_syntax)
        ae.maximum_associations = 16
        self._server = ae.start_server((self.host, self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        log.info("listening as %s on %s:%d, forwarding to %s, spool %s", self.ae_title,
                 self.host, self.port, self.forward, self.incoming.parent)

    def stop(self, timeout=60):
        """Stop accepting, let the current batch finish, then return."""
        if self._server is not None:
            self._server.shutdown()
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout)
        log.info("stopped; %d instance(s) left in the spool", len(list(
            self.incoming.glob("*.dcm"))))

    def wait(self):
        while not self._stop.is_set():
            time.sleep(0.2)
