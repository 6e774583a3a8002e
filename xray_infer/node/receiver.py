"""The node's receiving side: who may associate, what each PDU may cost, and the checks an
instance passes before it is spooled and acknowledged.

An instance is acknowledged (0x0000) only once it is durably spooled and everything its results
need has been checked; a refusal tells the peer a fixed text (``refusals.Refusal``), never a
value from its object or a path of this machine. Memory is admitted, not discovered: command
sets and data sets are counted as they arrive, a data set needs a slot of the in-flight budget
shared by all associations before its bytes are taken (the peer waits, by TCP, until one is
free), and compressed pixel data must declare the image its header does before it is decoded.
"""
import logging
import threading
import time
from collections import Counter
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import ALL_TRANSFER_SYNTAXES
from pynetdicom.sop_class import (ComputedRadiographyImageStorage,
                                  DigitalXRayImageStorageForPresentation,
                                  DigitalXRayImageStorageForProcessing,
                                  SecondaryCaptureImageStorage)

from ..decode import decode_bytes
from ..dicom_results import check_buildable, is_own_result, source_problem
from ..errors import InputError
from ..preprocess import check_radiograph
from .policy import is_uid, printable
from .refusals import SUCCESS, Refusal, Refused
from .spool import Conflict, SpoolFull

log = logging.getLogger("xray_infer.node")

#: The only SOP classes offered in negotiation: radiographs (and Secondary Capture, which
#: scanned films arrive as). Anything else is refused before a byte of it is sent.
RADIOGRAPH_CLASSES = (DigitalXRayImageStorageForPresentation,
                      DigitalXRayImageStorageForProcessing, ComputedRadiographyImageStorage,
                      SecondaryCaptureImageStorage)
#: Deflate is not offered: what a deflated data set inflates to is not known before inflating.
TRANSFER_SYNTAXES = [ts for ts in ALL_TRANSFER_SYNTAXES if ts != DeflatedExplicitVRLittleEndian]


def status(refused):
    ds = Dataset()
    ds.Status = refused.refusal.code
    ds.ErrorComment = refused.comment  # nothing from the peer's object
    return ds


class _Visit:
    """One association: its peer for the log lines, what it has sent of the message under
    way, and whether its data set holds a slot of the in-flight budget."""

    def __init__(self, ae_title, address):
        self.ae, self.address = printable(ae_title.strip(), 16), address
        self.who = f"{self.ae}@{address}"
        self.start, self.stored, self.refused = time.monotonic(), 0, 0
        self.command_bytes = self.dataset_bytes = 0
        self.holding = self.established = False


class Receiver:
    """The association and C-STORE handlers of the node (``handlers``), its limits and its
    spool. ``server`` (set once the association server exists) keeps the deadlines."""

    def __init__(self, *, ae_title, allow, limits, spool, metrics, refusals, spec, digest, wake,
                 audit=None):
        self.ae_title, self.allow, self.limits, self.spool = ae_title, allow, limits, spool
        self.audit = audit  # an audit.AuditTrail, or None
        self.metrics, self.refusals, self.spec, self.digest = metrics, refusals, spec, digest
        self.wake, self.server, self.ae = wake, None, None
        self._decoding = threading.Semaphore(limits.decoders)
        self._slots = threading.Condition()  # the in-flight budget: slots held, per address
        self._held = Counter()
        self._visits, self._lock = {}, threading.Lock()

    def handlers(self):
        from pynetdicom import evt
        return [(evt.EVT_REQUESTED, self._on_requested),
                (evt.EVT_ESTABLISHED, self._on_established),
                (evt.EVT_CONN_CLOSE, self._on_closed), (evt.EVT_PDU_RECV, self._on_pdu),
                (evt.EVT_C_STORE, self._on_store), (evt.EVT_FSM_TRANSITION, self._on_transition)]

    # -- associations --------------------------------------------------------------------------
    def _on_requested(self, event):
        assoc = event.assoc
        conn = getattr(assoc, "xray_conn", None)
        if conn is not None:
            conn.requested = True
        rq = assoc.requestor.primitive
        calling, called = str(rq.calling_ae_title), str(rq.called_ae_title)
        address = assoc.requestor.address
        if not self.allow.admits(calling, address):
            refusal, detail = Refusal.UNKNOWN_PEER, f"calling AE title {calling.strip()}"
        elif called.strip() != self.ae_title:
            refusal, detail = Refusal.CALLED_AE, f"called AE title {called.strip()}"
        elif self.open_associations() >= self.limits.max_associations:
            refusal, detail = Refusal.BUSY, f"calling AE title {calling.strip()}"
        else:
            with self._lock:
                self._visits[assoc] = _Visit(calling, address)
            return
        self.metrics.associations.labels("rejected").inc()
        self.refusals.add(address, refusal, detail)  # counted before the peer hears of it
        assoc.acse.send_reject(*refusal.code)
        assoc.kill()  # waits until the A-ASSOCIATE-RJ is sent, as pynetdicom's own rejections do

    def _on_transition(self, event):
        # An invalid PDU before any association request (Evt19 in Sta2; pynetdicom answers with
        # an A-ABORT and waits for ARTIM): closed now, as malformed, not at the set-up deadline.
        if event.fsm_event == "Evt19" and event.current_state == "Sta2":
            self.server.malformed(event.assoc)

    def open_associations(self):
        with self._lock:
            return sum(v.established for v in self._visits.values())

    def _on_established(self, event):
        visit = self._visits.get(event.assoc)
        if visit is not None:
            visit.established = True
            self.metrics.open_associations.inc()
            self.server.established(event.assoc)
        self.metrics.associations.labels("accepted").inc()

    def _on_closed(self, event):
        if self.server is not None:
            self.server.closed(event.assoc)
        with self._lock:
            visit = self._visits.pop(event.assoc, None)
        if visit is None:
            return
        self._release(visit)
        if visit.established:
            self.metrics.open_associations.dec()
        how = ("released" if event.assoc.is_released else
               "aborted" if event.assoc.is_aborted else "closed")
        log.info("association from %s %s after %.1f s: %d instance(s) stored, %d refused",
                 visit.who, how, time.monotonic() - visit.start, visit.stored, visit.refused)

    # -- what each PDU may cost ----------------------------------------------------------------
    def _on_pdu(self, event):
        # Count command and data sets as they arrive: pynetdicom would hold a whole message in
        # memory before any handler sees it.
        pdvs = getattr(event.pdu, "presentation_data_value_items", None)
        visit = self._visits.get(event.assoc)
        if not pdvs or visit is None:
            return
        for pdv in pdvs:
            value = pdv.presentation_data_value
            if not value:
                continue
            last = bool(value[0] & 2)
            if value[0] & 1:  # a command fragment
                visit.command_bytes += len(value) - 1
                if visit.command_bytes > self.limits.max_command_bytes:
                    return self._abort(event.assoc, visit, Refusal.COMMAND_TOO_LARGE,
                                       f"a command set over {self.limits.max_command_bytes} "
                                       f"bytes")
                if last:
                    visit.command_bytes = 0
                    self.server.message_complete(event.assoc)
                continue
            if not visit.holding and not self._admit(event.assoc, visit):
                return
            visit.dataset_bytes += len(value) - 1
            if visit.dataset_bytes > self.limits.max_object_bytes:
                return self._abort(event.assoc, visit, Refusal.TOO_LARGE,
                                   f"a data set over {self.limits.max_object_mb} MB")
            if last:
                visit.dataset_bytes = 0
                self.server.message_complete(event.assoc)

    def _admit(self, assoc, visit):
        """A slot of the in-flight budget for the data set that starts arriving; the peer waits
        for one (its deadline paused) up to the idle timeout, then the association is aborted."""
        self.server.hold(assoc)
        limits, address = self.limits, visit.address
        with self._slots:
            room = self._slots.wait_for(
                lambda: sum(self._held.values()) < limits.inflight_slots
                and self._held[address] < limits.inflight_per_peer, limits.network_timeout)
            if room:
                self._held[address] += 1
        if not room:
            self._abort(assoc, visit, Refusal.MEMORY_BUDGET,
                        f"no room among {limits.inflight_slots} data sets in flight "
                        f"({limits.inflight_per_peer} from one address)")
            return False
        visit.holding = True
        self.metrics.inflight.inc()
        self.server.message_complete(assoc)  # the clock runs again, from now
        return True

    def _release(self, visit):
        if visit.holding:
            visit.holding = False
            self.metrics.inflight.dec()
            with self._slots:
                self._held[visit.address] -= 1
                if self._held[visit.address] <= 0:
                    del self._held[visit.address]
                self._slots.notify_all()

    def _abort(self, assoc, visit, refusal, detail):
        log.warning("association from %s aborted: %s", visit.who, detail)
        self.metrics.refused.labels(refusal.label).inc()
        visit.refused += 1
        visit.dataset_bytes = visit.command_bytes = 0
        self._release(visit)
        assoc.abort()

    # -- receiving -----------------------------------------------------------------------------
    def _on_store(self, event):
        visit = self._visits.get(event.assoc) or _Visit("?", "?")
        self.server.hold(event.assoc)  # the peer waits on us now, not we on it
        try:
            uid, ds = self._accept(event)
        except Refused as e:
            visit.refused += 1
            self.metrics.refused.labels(e.refusal.label).inc()
            log.warning("from %s: instance %s refused (0x%04X): %s%s", visit.who,
                        printable(getattr(e, "uid", "?"), 64), e.refusal.code, e.comment,
                        "" if e.tell or not e.detail else f" ({printable(e.detail, 200)})")
            return status(e)
        finally:
            self._release(visit)
            self.server.message_complete(event.assoc)
        visit.stored += 1
        if uid is None:
            return SUCCESS
        self.metrics.received.inc()
        log.info("from %s: instance %s spooled", visit.who, uid)
        if self.audit is not None:
            self.audit.received(visit.ae, visit.address, ds)
        self.wake()
        return SUCCESS

    def _accept(self, event):
        """Check and spool one C-STORE: (the UID spooled, or None for an own result; the data
        set), or Refused."""
        try:
            # The object as sent, with its file meta: what is spooled. Only its header is
            # parsed here (the pixels are decoded once, below, under the decoders' bound), so an
            # instance in the handler costs its received bytes and this copy, no more.
            encoded = event.encoded_dataset()
            ds = dcmread(BytesIO(encoded), stop_before_pixels=True)
            uid = str(ds.get("SOPInstanceUID", ""))
        except Exception:  # a data set pydicom cannot parse
            raise Refused(Refusal.UNDECODABLE, "unreadable data set") from None
        try:
            if not is_uid(uid):
                raise Refused(Refusal.IDENTIFIERS, "SOP Instance UID missing or not a valid UID",
                              tell=True)
            return self._check_and_spool(ds, encoded, uid), ds
        except Refused as e:
            e.uid = uid  # logged escaped: it may be anything the peer sent
            raise

    def _check_and_spool(self, ds, encoded, uid):
        if is_own_result(ds, self.digest):
            self.metrics.own_results.inc()
            log.info("instance %s is a result of this model: acknowledged, not classified", uid)
            return None
        if ds.get("SOPClassUID") not in RADIOGRAPH_CLASSES:  # not negotiable; checked anyway
            raise Refused(Refusal.SOP_CLASS)
        problem = source_problem(ds, is_uid)
        if problem:
            raise Refused(Refusal.IDENTIFIERS, problem, tell=True)
        try:
            check_buildable(ds, self.spec, self.digest)
        except Exception as e:  # the type only: messages quote values (patient data)
            raise Refused(Refusal.IDENTIFIERS, f"results cannot be built from its header "
                                               f"({type(e).__name__})", tell=True) from None
        try:
            rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
            depth = int(ds.get("SamplesPerPixel", 1)) * -(-int(ds.get("BitsAllocated", 16)) // 8)
        except (TypeError, ValueError):
            raise Refused(Refusal.UNDECODABLE, "malformed image header", tell=True) from None
        if rows * cols * depth > self.limits.max_object_bytes:
            raise Refused(Refusal.TOO_LARGE, f"declared image over "
                                             f"{self.limits.max_object_mb} MB", tell=True)
        try:
            with self._decoding:  # bounds the memory decoding takes, whatever many peers send
                check_radiograph(decode_bytes(encoded, uid).pixels, uid)
        except InputError as e:
            raise Refused(Refusal.UNDECODABLE, e.reason) from None
        except MemoryError:
            raise Refused(Refusal.MEMORY) from None
        except Exception as e:  # a decoder failing in an unforeseen way is still a refusal
            raise Refused(Refusal.UNDECODABLE, f"cannot decode: {type(e).__name__}") from None
        try:
            self.spool.put(uid, encoded)
        except Conflict:
            raise Refused(Refusal.DUPLICATE, "a different object is already spooled under "
                                             "this UID; the first is kept") from None
        except SpoolFull as e:
            log.error("spool %s: %s", self.spool.root, e)
            raise Refused(Refusal.SPOOL_FULL) from None
        except OSError as e:
            log.error("spool %s: write failed: %s", self.spool.root, e)
            raise Refused(Refusal.SPOOL_ERROR) from None
        return uid
