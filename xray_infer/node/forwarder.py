"""The node's forwarding side: classify what the spool holds and deliver each instance's
results (SR + Secondary Capture) to the destination, a PACS by C-STORE or a DICOMweb server
by STOW-RS; an instance leaves the spool only when both were stored, or into quarantine with
the reason.

The worker is supervised: whatever it raises (a spool that cannot be listed for want of file
descriptors, a full or failing disk, a bug) is logged and the worker starts again after a
backoff; it never dies while the node acknowledges instances. A destination that refuses an
instance, or aborts the association while it is being sent, costs that instance a retry
(backoff, then quarantine after ``max_refusals``) and never holds back the others; over
DICOMweb, so does a 4xx, an instance in the Failed SOP Sequence, a 5xx, a timeout or a
connection dropped mid-upload. A server that cannot be reached, or answers 401/403/429/503,
holds everything in the spool (backoff, or the Retry-After a busy server asks for) and costs no
instance anything.
"""
import io
import logging
import threading
import time

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from ..decode import decode_bytes
from ..dicom_results import results_for
from ..dicomweb import Outcome, Unavailable, connects, store
from ..result import Status
from .network import AssociationError, associate, is_stored, response_status
from .policy import printable

log = logging.getLogger("xray_infer.node")

class Forwarder:
    def __init__(self, *, spool, classifier, digest, forward, forward_tls, ae_title, limits,
                 metrics, progress, batch_size, audit=None):
        self.spool, self.classifier, self.digest = spool, classifier, digest
        self.audit = audit  # an audit.AuditTrail, or None
        self.forward, self.forward_tls, self.ae_title = forward, forward_tls, ae_title
        self.limits, self.metrics, self.progress = limits, metrics, progress
        self.batch_size = batch_size
        # a DICOMweb base URL comes with an Access (dicomweb.Access) in forward_tls
        self.web = forward_tls.client(forward) if isinstance(forward, str) else None
        self.destination_last_seen = None  # time.time() of the last association with it
        self._unreachable = False  # the last STOW-RS request opened no connection
        self._asked_wait = None    # the seconds a busy DICOMweb server last asked for
        self._retry = {}         # spool file name -> (refusals so far, not before monotonic)
        self._delivered = set()  # delivered, but the spool would not let us remove them
        self._stop, self.wake = threading.Event(), threading.Event()
        self._thread = None

    # -- supervision ---------------------------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._supervise, name="xray-node-forwarder",
                                        daemon=True)
        self._thread.start()

    def alive(self):
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout):
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _supervise(self):
        backoff = 0.0
        while not self._stop.is_set():
            try:
                self._work()
            except Exception:  # a spool error, a bug: logged; the instances stay spooled
                self.metrics.worker_restarts.inc()
                backoff = min(max(backoff * 2, self.limits.retry_base),
                              self.limits.backoff_cap)
                log.exception("the forwarding worker failed; it starts again in %.0f s and the "
                              "instances stay in the spool", backoff)
                self._stop.wait(backoff)

    def _work(self):
        backoff = 0.0
        while not self._stop.is_set():
            pending = self.spool.pending()
            self.metrics.forwarder_passes.inc()
            batch = self._due(pending)
            if not batch:
                if not pending:
                    self.progress.moved()  # nothing waits: nothing is stalled
                self.wake.wait(0.5)
                self.wake.clear()
                continue
            if self._process(batch):
                backoff = 0.0
            else:  # the destination is down: wait longer each time, up to a minute, or as
                # long as a busy server asked (Retry-After, dicomweb.MAX_RETRY_AFTER at most)
                backoff = min(max(backoff * 2, self.limits.retry_base),
                              self.limits.backoff_cap)
                asked, self._asked_wait = self._asked_wait, None
                self._stop.wait(max(backoff, asked or 0.0))

    # -- one batch -----------------------------------------------------------------------------
    def _due(self, pending):
        """The next batch of ``pending`` (the spool's listing): not delivered already, and not
        waiting out a retry's backoff; at most ``batch_size`` instances and, past the first,
        ``limits.max_object_mb`` of spooled bytes in all. Decoding and the scan-sized heatmaps
        cost a few times an instance's bytes, so a batch costs what one large instance does,
        not ``batch_size`` of them (eight 60 MiB instances took the node past 2 GB)."""
        now = time.monotonic()
        batch, total = [], 0
        for p in pending:
            if p.name in self._delivered or self._retry.get(p.name, (0, 0))[1] > now:
                continue
            try:
                size = p.stat().st_size
            except OSError:  # gone meanwhile
                continue
            if batch and (len(batch) >= self.batch_size
                          or total + size > self.limits.max_object_bytes):
                break
            batch.append(p)
            total += size
        return batch

    def _quarantine(self, path, reason):
        self._retry.pop(path.name, None)
        if self.audit is not None:  # its results given up on: audited against its source
            try:
                import pydicom
                source = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
                    "PatientID", "StudyInstanceUID", "SOPClassUID"])
            except Exception:  # unreadable: audited without its study and patient
                source = {}
            from ..audit import SERIOUS_FAILURE
            self.audit.sent(self.forward, [source], SERIOUS_FAILURE,
                            "results not delivered; the instance is quarantined")
        try:
            self.spool.fail(path, reason)
        except OSError as e:
            log.error("%s: could not be moved to %s: %s", path.name, self.spool.failed, e)
            self._delivered.add(path.name)  # never retried: it stays where it is
        self.metrics.quarantined.inc()
        self.progress.moved()
        log.warning("%s: quarantined in %s: %s", path.name, self.spool.failed, reason)

    def _results(self, batch):
        """(path, uid, label, SR, SC) for each instance of ``batch`` that could be classified;
        the rest are quarantined with the reason. The batch is classified in one call."""
        read = []
        for path in batch:
            try:  # read once; the header parsed apart from the pixels, the pixels decoded once
                data = path.read_bytes()
            except OSError as e:  # EMFILE, EIO, ...: it stays spooled, tried again later
                log.error("%s: cannot be read from the spool now: %s", path.name, e)
                continue
            try:
                source = dcmread(io.BytesIO(data), stop_before_pixels=True)
                uid = str(source.SOPInstanceUID)
                read.append((path, uid, source, decode_bytes(data, uid)))
            except Exception as e:
                self._quarantine(path, f"unreadable in the spool: {type(e).__name__}")
        results = self.classifier.classify([scan for *_, scan in read]) if read else []
        ready = []
        for (path, uid, source, scan), r in zip(read, results):
            if r.status is Status.OUT_OF_SCOPE:  # acknowledged; no result claims a chest finding
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
        could not be reached (everything stays in the spool, and nothing was classified: a
        destination that is down costs no work, nor memory, again and again)."""
        if self.web is not None:
            return self._process_web(batch)
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.limits.dimse_timeout
        ae.add_requested_context(ComprehensiveSRStorage, ExplicitVRLittleEndian)
        ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
        try:
            assoc = associate(ae, self.forward, self.forward_tls)
        except AssociationError as e:
            log.warning("%d instance(s) wait in the spool: %s", len(batch), e)
            return False
        self.destination_last_seen = time.time()
        try:
            ready = self._results(batch)
            for path, uid, label, sr, sc in ready:
                codes, comment = [], ""
                for obj in (sr, sc):
                    answer = assoc.send_c_store(obj)
                    codes.append(response_status(answer))
                    if not is_stored(codes[-1]):
                        comment = printable(answer.get("ErrorComment", ""), 64) if answer else ""
                        break
                if all(is_stored(c) for c in codes):
                    self._delivered_ok(path, uid, label, sr, sc)
                elif codes[-1] is None:  # no answer: the association is gone, on this instance
                    self._refused_by_destination(path, uid, "aborted the association on it")
                    return True  # the rest go on a new association, at once
                else:
                    self._refused_by_destination(
                        path, uid, f"refused the results with status 0x{codes[-1]:04X} "
                                   f"{comment}".rstrip())
        finally:
            if assoc.is_established:
                assoc.release()
        return True

    def _process_web(self, batch):
        """``_process`` over DICOMweb: one STOW-RS request per instance (its SR and SC), read
        per object. HTTP has no association to try first: after a request that opened no
        connection, a TCP connection is tried before the batch is classified again (a server
        that is down costs no work per backoff); one that answers 401/403/429/503 still costs
        the batch's classification once per backoff."""
        if self._unreachable and not connects(self.forward, self.limits.dimse_timeout):
            log.warning("%d instance(s) wait in the spool: %s still cannot be reached",
                        len(batch), self.forward)
            return False
        for path, uid, label, sr, sc in self._results(batch):
            try:
                outcome = store(self.web, [sr, sc])
            except Unavailable as e:
                self._unreachable, self._asked_wait = e.unreachable, e.retry_after
                asked = f"; it asked for {e.retry_after:.0f} s" if e.retry_after else ""
                log.warning("instances wait in the spool: %s %s%s", self.forward, e, asked)
                return False
            self._unreachable = False
            self.destination_last_seen = time.time()
            missed = [answer for answer in (outcome[str(o.SOPInstanceUID)] for o in (sr, sc))
                      if answer[0] is not Outcome.STORED]
            if not missed:
                self._delivered_ok(path, uid, label, sr, sc)
            else:
                kind, why = missed[0]
                self._refused_by_destination(
                    path, uid, ("refused the results: " if kind is Outcome.REFUSED
                                else "did not store the results: ") + why)
        return True

    def _delivered_ok(self, path, uid, label, sr, sc):
        self.metrics.forwarded.inc()
        if self.audit is not None:
            self.audit.sent(self.forward, [sr, sc])
        log.info("instance %s: %s; SR %s and SC %s stored by %s", uid, label,
                 sr.SOPInstanceUID, sc.SOPInstanceUID, self.forward)
        self._finished(path, uid)

    def _finished(self, path, uid):
        """Nothing more to do for this instance: out of the spool."""
        self._retry.pop(path.name, None)
        self.progress.moved()
        try:
            self.spool.done(path)
        except OSError as e:
            self._delivered.add(path.name)  # not sent again while this process runs
            log.error("instance %s done, but cannot be removed from the spool: %s", uid, e)

    def _refused_by_destination(self, path, uid, what):
        refusals = self._retry.get(path.name, (0, 0))[0] + 1
        why = f"{self.forward} {what}"
        if refusals >= self.limits.max_refusals:
            self._quarantine(path, f"{why} ({refusals} times)")
            return
        delay = min(self.limits.retry_base * 2 ** (refusals - 1), self.limits.retry_cap)
        self._retry[path.name] = (refusals, time.monotonic() + delay)
        self.metrics.retried.inc()
        log.warning("instance %s: %s; retry %d of %d in %.0f s", uid, why, refusals,
                    self.limits.max_refusals - 1, delay)
