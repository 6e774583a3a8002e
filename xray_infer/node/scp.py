"""The node: a Storage SCP that admits only listed peers, checks each radiograph before
acknowledging it, spools it, and a worker that classifies the spool and forwards the results.

An instance is acknowledged (0x0000) only once it is durably spooled and everything its results
need has been checked; a refusal names the reason and never a value from the object or a path
of this machine. Out-of-resource conditions (spool full, memory) are 0xA700, which a sender
retries; an object this node can never use is 0xC000.
"""
import io
import logging
import threading
import time

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import (ComprehensiveSRStorage, ComputedRadiographyImageStorage,
                                  DigitalXRayImageStorageForPresentation,
                                  DigitalXRayImageStorageForProcessing,
                                  SecondaryCaptureImageStorage, Verification)

from ..classifier import Classifier
from ..decode import decode_bytes
from ..dicom_results import check_buildable, is_own_result, results_for, source_problem
from ..errors import InputError
from ..model import model_digest
from ..preprocess import check_radiograph
from .metrics import NodeMetrics
from .network import (CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SUCCESS, AssociationError,
                      GuardedServer, associate, is_stored, response_status)
from .policy import DEFAULT_AE_TITLE, DEFAULT_BATCH_SIZE, Allowlist, Limits, is_uid, printable
from .spool import Spool, SpoolFull

log = logging.getLogger("xray_infer.node")

#: The only SOP classes offered in negotiation: radiographs (and Secondary Capture, which
#: scanned films arrive as). Anything else is refused before a byte of it is sent.
RADIOGRAPH_CLASSES = (DigitalXRayImageStorageForPresentation,
                      DigitalXRayImageStorageForProcessing, ComputedRadiographyImageStorage,
                      SecondaryCaptureImageStorage)
#: Deflate is not offered: what a deflated data set inflates to is not known before inflating.
TRANSFER_SYNTAXES = [ts for ts in ALL_TRANSFER_SYNTAXES if ts != DeflatedExplicitVRLittleEndian]


def _refusal(text, code=CANNOT_UNDERSTAND):
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = text[:64]
    return ds


class _Refused(Exception):
    """An instance refused: ``reason`` (a metrics label), ``text`` (the Error Comment)."""

    def __init__(self, reason, text, code=CANNOT_UNDERSTAND):
        super().__init__(text)
        self.reason, self.text, self.code, self.uid = reason, text, code, "?"


class _Visit:
    """One association, for its log line."""

    def __init__(self, ae_title, address):
        self.who = f"{printable(ae_title.strip(), 16)}@{address}"
        self.start, self.stored, self.refused = time.monotonic(), 0, 0
        self.dataset_bytes = 0  # of the data set being received
        self.established = False


class Node:
    """Storage SCP + a worker that classifies the spool and forwards the results."""

    def __init__(self, port, forward, spool, allow, *, ae_title=DEFAULT_AE_TITLE,
                 host="127.0.0.1", batch_size=DEFAULT_BATCH_SIZE, model=None,
                 limits=Limits(), tls=None, forward_tls=None, metrics_port=None, scope=True,
                 ages=None):
        if not isinstance(allow, Allowlist):
            raise TypeError("allow must be an Allowlist (Allowlist(any=True) admits everyone)")
        self.port, self.host, self.forward = port, host, forward
        self.ae_title, self.batch_size, self.limits = ae_title, batch_size, limits
        self.allow = allow.resolved()
        self.tls, self.forward_tls, self.metrics_port = tls, forward_tls, metrics_port
        self.spool = Spool(spool, limits.min_free_mb * 2 ** 20)
        self.metrics = NodeMetrics(lambda: len(self.spool.pending()), self._spool_writable)
        self.classifier = Classifier(model, heatmaps=True, batch_size=batch_size, workers=2,
                                     scope=scope, ages=ages)
        self.digest = model_digest(self.classifier.variant.path)  # the file that scores
        self._decoding = threading.Semaphore(limits.decoders)
        self._visits, self._visits_lock = {}, threading.Lock()
        self._retry = {}         # spool file name -> (refusals so far, not before monotonic)
        self._delivered = set()  # delivered, but the spool would not let us remove them
        self._backoff = 0.0      # seconds to wait after the destination was unreachable
        self._stop, self._wake, self._stopped = threading.Event(), threading.Event(), \
            threading.Event()
        self._ae = self._server = self._worker = self._http = None

    def _spool_writable(self):
        try:
            self.spool.check_writable()
            return True
        except OSError:
            return False

    # -- associations --------------------------------------------------------------------------
    def _on_requested(self, event):
        assoc = event.assoc
        rq = assoc.requestor.primitive
        calling, called = str(rq.calling_ae_title), str(rq.called_ae_title)
        address = assoc.requestor.address
        visit = _Visit(calling, address)
        if not self.allow.admits(calling, address):
            why, rsd, reason = "not on the allowlist", (1, 1, 3), "unknown_peer"
        elif called.strip() != self.ae_title:
            why, rsd, reason = (f"called AE title {printable(called.strip(), 16)} is not "
                                f"{self.ae_title}"), (1, 1, 7), "called_ae"
        elif sum(a.is_acceptor and a.is_established for a in self._ae.active_associations) \
                >= self.limits.max_associations:
            why, rsd, reason = (f"{self.limits.max_associations} associations open (the "
                                f"limit)"), (2, 3, 2), "busy"
        else:
            with self._visits_lock:
                self._visits[assoc] = visit
            return
        assoc.acse.send_reject(*rsd)
        assoc.kill()  # waits until the A-ASSOCIATE-RJ is sent, as pynetdicom's own rejections do
        self.metrics.refused.labels(reason).inc()
        self.metrics.associations.labels("rejected").inc()
        log.warning("association from %s rejected: %s", visit.who, why)

    def _on_established(self, event):
        visit = self._visits.get(event.assoc)
        if visit is not None:
            visit.established = True
            self.metrics.open_associations.inc()
        self.metrics.associations.labels("accepted").inc()

    def _on_closed(self, event):
        with self._visits_lock:
            visit = self._visits.pop(event.assoc, None)
        if visit is None:
            return
        if visit.established:
            self.metrics.open_associations.dec()
        how = ("released" if event.assoc.is_released else
               "aborted" if event.assoc.is_aborted else "closed")
        log.info("association from %s %s after %.1f s: %d instance(s) stored, %d refused",
                 visit.who, how, time.monotonic() - visit.start, visit.stored, visit.refused)

    def _on_pdu(self, event):
        # Count the data set as it arrives and abort past the limit: pynetdicom would hold
        # the whole object in memory before any handler sees it.
        pdvs = getattr(event.pdu, "presentation_data_value_items", None)
        visit = self._visits.get(event.assoc)
        if not pdvs or visit is None:
            return
        for pdv in pdvs:
            value = pdv.presentation_data_value
            if not value or value[0] & 1:  # a command fragment
                continue
            visit.dataset_bytes += len(value) - 1
            if visit.dataset_bytes > self.limits.max_object_bytes:
                log.warning("association from %s aborted: a data set over %d MB", visit.who,
                            self.limits.max_object_mb)
                self.metrics.refused.labels("too_large").inc()
                visit.refused += 1
                visit.dataset_bytes = 0
                event.assoc.abort()
                return
            if value[0] & 2:  # the data set's last fragment
                visit.dataset_bytes = 0

    # -- receiving -----------------------------------------------------------------------------
    def _on_store(self, event):
        visit = self._visits.get(event.assoc) or _Visit("?", "?")
        try:
            uid = self._accept(event)
        except _Refused as e:
            visit.refused += 1
            self.metrics.refused.labels(e.reason).inc()
            log.warning("from %s: instance %s refused (0x%04X): %s", visit.who,
                        printable(e.uid, 64), e.code, e.text)
            return _refusal(e.text, e.code)
        visit.stored += 1
        if uid is None:
            return SUCCESS
        self.metrics.received.inc()
        log.info("from %s: instance %s spooled", visit.who, uid)
        self._wake.set()
        return SUCCESS

    def _accept(self, event):
        """Check and spool one C-STORE; the UID spooled, None for an own result, or _Refused."""
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            uid = str(ds.get("SOPInstanceUID", ""))
        except Exception:  # a data set pydicom cannot parse
            raise _Refused("undecodable", "unreadable data set") from None
        try:
            if not is_uid(uid):
                raise _Refused("identifiers", "SOP Instance UID missing or not a valid UID")
            return self._check_and_spool(ds, event, uid)
        except _Refused as e:
            e.uid = uid  # logged escaped: it may be anything the peer sent
            raise

    def _check_and_spool(self, ds, event, uid):
        if is_own_result(ds, self.digest):
            self.metrics.own_results.inc()
            log.info("instance %s is a result of this model: acknowledged, not classified", uid)
            return None
        if ds.SOPClassUID not in RADIOGRAPH_CLASSES:  # not negotiable; checked all the same
            raise _Refused("sop_class", "SOP class not a radiograph this node classifies")
        problem = source_problem(ds, is_uid)
        if problem:
            raise _Refused("identifiers", problem)
        try:
            check_buildable(ds, self.classifier.spec, self.digest)
        except Exception as e:  # the type only: messages quote values (patient data)
            raise _Refused("identifiers", f"results cannot be built from its header "
                                          f"({type(e).__name__})") from None
        try:
            rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
            depth = int(ds.get("SamplesPerPixel", 1)) * -(-int(ds.get("BitsAllocated", 16)) // 8)
        except (TypeError, ValueError):
            raise _Refused("undecodable", "malformed image header") from None
        if rows * cols * depth > self.limits.max_object_bytes:
            raise _Refused("too_large", f"declared image over {self.limits.max_object_mb} MB")
        encoded = event.encoded_dataset()
        try:
            with self._decoding:  # bounds the memory decoding takes, whatever many peers send
                check_radiograph(decode_bytes(encoded, uid).pixels, uid)
        except InputError as e:
            raise _Refused("undecodable", e.reason) from None
        except MemoryError:
            raise _Refused("memory", "out of memory; retry later", OUT_OF_RESOURCES) from None
        except Exception as e:  # a decoder failing in an unforeseen way is still a refusal
            raise _Refused("undecodable", f"cannot decode: {type(e).__name__}") from None
        try:
            self.spool.put(uid, encoded)
        except SpoolFull as e:
            log.error("spool %s: %s", self.spool.root, e)
            raise _Refused("spool_full", "out of storage; retry later", OUT_OF_RESOURCES) \
                from None
        except OSError as e:
            log.error("spool %s: write failed: %s", self.spool.root, e)
            raise _Refused("spool_error", "cannot store now; retry later", OUT_OF_RESOURCES) \
                from None
        return uid

    # -- classifying and forwarding ------------------------------------------------------------
    def _due(self):
        now = time.monotonic()
        return [p for p in self.spool.pending() if p.name not in self._delivered
                and self._retry.get(p.name, (0, 0))[1] <= now][:self.batch_size]

    def _quarantine(self, path, reason):
        self._retry.pop(path.name, None)
        try:
            self.spool.fail(path, reason)
        except OSError as e:
            log.error("%s: could not be moved to %s: %s", path.name, self.spool.failed, e)
            self._delivered.add(path.name)  # never retried: it stays where it is
        self.metrics.quarantined.inc()
        log.warning("%s: quarantined in %s: %s", path.name, self.spool.failed, reason)

    def _results(self, batch):
        """(path, uid, SR, SC) for each instance of ``batch`` that could be classified; the
        rest are quarantined with the reason. The batch is classified in one call."""
        read = []
        for path in batch:
            try:  # read once; the header parsed apart from the pixels, the pixels decoded once
                data = path.read_bytes()
                source = dcmread(io.BytesIO(data), stop_before_pixels=True)
                uid = str(source.SOPInstanceUID)
                read.append((path, uid, source, decode_bytes(data, uid)))
            except Exception as e:
                self._quarantine(path, f"unreadable in the spool: {type(e).__name__}")
        results = self.classifier.classify([scan for *_, scan in read]) if read else []
        ready = []
        for (path, uid, source, scan), r in zip(read, results):
            if r.status == "out_of_scope":  # acknowledged; no result claims a chest finding
                self.metrics.out_of_scope.labels(r.refused_by).inc()
                log.info("instance %s: out of scope (%s); nothing forwarded", uid, r.refused_by)
                self._finished(path, uid)
                continue
            if not r.ok:
                self._quarantine(path, f"not classified: {r.error}")
                continue
            self.metrics.classified.inc()
            try:
                sr, sc = results_for(source, r, scan.pixels, scan.maxval, self.classifier.spec,
                                     self.digest)
            except Exception as e:  # checked before the acknowledgement; kept as a backstop
                self._quarantine(path, f"results not built: {type(e).__name__}")
                continue
            ready.append((path, uid, r.label, sr, sc))
        return ready

    def _process(self, batch):
        """Classify ``batch`` and forward its results. Returns False when the destination
        could not be reached (everything stays in the spool)."""
        ready = self._results(batch)
        if not ready:
            return True
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.limits.dimse_timeout
        ae.add_requested_context(ComprehensiveSRStorage, ExplicitVRLittleEndian)
        ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
        try:
            assoc = associate(ae, self.forward, self.forward_tls)
        except AssociationError as e:
            log.warning("results of %d instance(s) wait in the spool: %s", len(ready), e)
            return False
        self.metrics.destination_last_seen = time.time()
        try:
            for path, uid, label, sr, sc in ready:
                codes = []
                for obj in (sr, sc):
                    status = assoc.send_c_store(obj)
                    codes.append(response_status(status))
                    if not is_stored(codes[-1]):
                        comment = printable(status.get("ErrorComment", ""), 64) if status else ""
                        break
                if all(is_stored(c) for c in codes):
                    self._delivered_ok(path, uid, label, sr, sc)
                elif codes[-1] is None:  # no response: the association is gone
                    log.warning("%s dropped the association; %s and the rest wait in the spool",
                                self.forward, uid)
                    return False
                else:
                    self._refused_by_destination(path, uid, codes[-1], comment)
        finally:
            if assoc.is_established:
                assoc.release()
        return True

    def _delivered_ok(self, path, uid, label, sr, sc):
        self.metrics.forwarded.inc()
        log.info("instance %s: %s; SR %s and SC %s stored by %s", uid, label,
                 sr.SOPInstanceUID, sc.SOPInstanceUID, self.forward)
        self._finished(path, uid)

    def _finished(self, path, uid):
        """Nothing more to do for this instance: out of the spool."""
        self._retry.pop(path.name, None)
        try:
            self.spool.done(path)
        except OSError as e:
            self._delivered.add(path.name)  # not sent again while this process runs
            log.error("instance %s done, but cannot be removed from the spool: %s", uid, e)

    def _refused_by_destination(self, path, uid, code, comment):
        refusals = self._retry.get(path.name, (0, 0))[0] + 1
        why = f"{self.forward} refused the results with status 0x{code:04X} {comment}".rstrip()
        if refusals >= self.limits.max_refusals:
            self._quarantine(path, f"{why} ({refusals} times)")
            return
        delay = min(self.limits.retry_base * 2 ** (refusals - 1), self.limits.retry_cap)
        self._retry[path.name] = (refusals, time.monotonic() + delay)
        self.metrics.retried.inc()
        log.warning("instance %s: %s; retry %d of %d in %.0f s", uid, why, refusals,
                    self.limits.max_refusals - 1, delay)

    def _work(self):
        while not self._stop.is_set():
            batch = self._due()
            if not batch:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                delivered = self._process(batch)
            except Exception:  # keep the node up; the instances stay in the spool
                log.exception("processing a batch failed; it stays in the spool")
                delivered = False
            if delivered:
                self._backoff = 0.0
            else:  # the destination is down: wait longer each time, up to a minute
                self._backoff = min(max(self._backoff * 2, self.limits.retry_base), 60.0)
                self._stop.wait(self._backoff)

    # -- running -------------------------------------------------------------------------------
    def start(self):
        """Process what the spool already holds, then accept associations."""
        swept = self.spool.sweep()
        if swept:
            log.info("removed %d partial file(s) an earlier run left in the spool", swept)
        ae = self._ae = AE(ae_title=self.ae_title)
        for sop_class in RADIOGRAPH_CLASSES:
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_called_aet = True
        ae.maximum_associations = self.limits.max_associations
        ae.acse_timeout = self.limits.acse_timeout
        ae.network_timeout = self.limits.network_timeout
        ae.dimse_timeout = self.limits.dimse_timeout
        handlers = [(evt.EVT_REQUESTED, self._on_requested),
                    (evt.EVT_ESTABLISHED, self._on_established),
                    (evt.EVT_CONN_CLOSE, self._on_closed), (evt.EVT_PDU_RECV, self._on_pdu),
                    (evt.EVT_C_STORE, self._on_store)]
        self._server = ae.make_server((self.host, self.port), evt_handlers=handlers,
                                      server_class=GuardedServer, tls=self.tls,
                                      max_per_peer=self.limits.max_per_peer,
                                      handshake_timeout=self.limits.acse_timeout)
        ae._servers.append(self._server)  # as ae.start_server does: shutdown() expects it
        if self.metrics_port is not None:
            self._http = self.metrics.serve(self.host, self.metrics_port)
        self._worker = threading.Thread(target=self._work, name="xray-node-worker", daemon=True)
        self._worker.start()
        threading.Thread(target=self._server.serve_forever, name="xray-node-server",
                         daemon=True).start()
        if self.allow.any:
            log.warning("any caller admitted: every peer that can reach %s:%d may send to "
                        "this node", self.host, self.port)
        log.info("listening as %s on %s:%d%s, forwarding to %s%s, spool %s, %s", self.ae_title,
                 self.host, self.port, " (TLS)" if self.tls else "", self.forward,
                 " (TLS)" if self.forward_tls else "", self.spool.root,
                 "any caller" if self.allow.any else
                 "callers " + ", ".join(map(str, self.allow.callers)))

    def stop(self, timeout=3.0):
        """Abort open associations, stop accepting, let the worker finish if it can within
        ``timeout`` seconds, then return (instances not delivered stay in the spool)."""
        self._stop.set()
        self._wake.set()
        if self._ae is not None:
            for assoc in list(self._ae.active_associations):
                assoc.abort()
        if self._server is not None:
            self._server.shutdown()
        if self._http is not None:
            self._http.shutdown()
        if self._worker is not None:
            self._worker.join(timeout)
        log.info("stopped; %d instance(s) left in the spool", len(self.spool.pending()))
        self._stopped.set()

    def wait(self):
        """Return once ``stop`` (from another thread, a signal handler's) has finished."""
        while not self._stopped.wait(0.2):
            pass
