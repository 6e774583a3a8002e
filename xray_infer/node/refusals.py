"""Why the node refuses a connection, an association or an instance: one enum, with each
reason's metrics label, C-STORE status or A-ASSOCIATE-RJ code and the fixed text a peer is
told; and the log that reports refusals of connections in aggregate.

What a peer is told never carries a value from its object (an Error Comment is the fixed text
here); what the log says of a peer's values is escaped (``policy.printable``).
"""
import logging
import threading
import time
from collections import Counter, defaultdict
from enum import Enum

from .policy import printable
from ..errors import XrayInferError

log = logging.getLogger("xray_infer.node")

#: C-STORE statuses (PS3.4 B.2.3; PS3.7 C.4 for 0x0111).
SUCCESS, DUPLICATE, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0x0111, 0xA700, 0xC000


class Refusal(Enum):
    """``label`` (the metrics ``reason``), ``code`` (the C-STORE status, or the A-ASSOCIATE-RJ
    result, source and diagnostic of an association) and ``text`` (what the peer is told)."""

    # connections and associations
    UNKNOWN_PEER = ("unknown_peer", (1, 1, 3), "not on the allowlist")
    CALLED_AE = ("called_ae", (1, 1, 7), "called AE title is not this node's")
    BUSY = ("busy", (2, 3, 2), "association limit reached")
    PENDING = ("pending", None, "too many connections not yet associated")
    PER_PEER = ("per_peer", None, "too many connections from this address")
    SETUP_DEADLINE = ("setup_deadline", None, "no association within the setup deadline")
    IDLE = ("idle", None, "no complete message within the idle deadline")
    TLS = ("tls", None, "TLS handshake failed or certificate not a client leaf")
    MALFORMED = ("malformed", None, "closed before a valid association request")
    COMMAND_TOO_LARGE = ("command_too_large", None, "command set over the limit")
    MEMORY_BUDGET = ("memory_budget", None, "no room in the in-flight budget in time")
    # instances
    SOP_CLASS = ("sop_class", CANNOT_UNDERSTAND, "SOP class not a radiograph this node "
                 "classifies")
    IDENTIFIERS = ("identifiers", CANNOT_UNDERSTAND, "identifiers missing or invalid")
    TOO_LARGE = ("too_large", CANNOT_UNDERSTAND, "object over the size limit")
    UNDECODABLE = ("undecodable", CANNOT_UNDERSTAND, "pixel data cannot be decoded safely")
    DUPLICATE = ("duplicate", DUPLICATE, "another object under this SOP Instance UID")
    SPOOL_FULL = ("spool_full", OUT_OF_RESOURCES, "out of storage; retry later")
    SPOOL_ERROR = ("spool_error", OUT_OF_RESOURCES, "cannot store now; retry later")
    MEMORY = ("memory", OUT_OF_RESOURCES, "out of memory; retry later")

    def __init__(self, label, code, text):
        self.label, self.code, self.text = label, code, text


#: The refusals security staff audit (who a peer is, what its certificate proves); the rest
#: (limits, deadlines, malformed requests) are counted in the metrics and the log.
AUDITED = (Refusal.UNKNOWN_PEER, Refusal.CALLED_AE, Refusal.TLS)


class Refused(XrayInferError):
    """An instance refused: ``refusal`` (a Refusal) and ``detail``, for the log (escaped
    there: a decoder's message may quote what the peer sent). ``tell``: the detail is this
    node's own words, naming no value from the object (``dicom_results.source_problem``,
    a limit), and the peer is told it instead of the refusal's fixed text."""

    def __init__(self, refusal, detail="", tell=False):
        super().__init__(refusal.text)
        self.refusal, self.detail, self.tell = refusal, detail, tell

    @property
    def comment(self):
        """The Error Comment: at most 64 characters, never a value from the object."""
        return (self.detail if self.tell and self.detail else self.refusal.text)[:64]


class RefusalLog:
    """Refusals of connections and associations: counted in ``metrics`` at once, and logged so
    that a flood cannot flood the log. The first refusal of an address in an interval is one
    line at once (for at most ``first_lines`` addresses an interval); the rest are summed into
    one line per address when the interval ends, with the count of each reason and up to three
    details (the AE titles it used, what its certificate was); from more than
    ``addresses_apart`` addresses, one line for them all (a flood from many addresses, not a
    line each)."""

    def __init__(self, metrics, interval=10.0, first_lines=20, addresses_apart=5, audit=None):
        self.metrics, self.interval, self.first_lines = metrics, interval, first_lines
        self.addresses_apart, self.audit = addresses_apart, audit
        self._lock = threading.Lock()
        self._reset(time.monotonic())

    def _reset(self, now):
        self._counts, self._details, self._named, self._since = \
            defaultdict(Counter), defaultdict(list), set(), now

    def add(self, address, refusal, detail=None):
        """Count a refusal of ``address``; ``detail`` (escaped here): what it sent, such as
        the AE title it called with."""
        self.metrics.refused.labels(refusal.label).inc()
        detail = None if detail is None else printable(detail, 80)
        if self.audit is not None and refusal in AUDITED:
            self.audit.peer_refused(address, refusal.text + ("" if detail is None
                                                             else f" ({detail})"),
                                    certificate=refusal is Refusal.TLS)
        with self._lock:
            first = address not in self._named and len(self._named) < self.first_lines
            if first:
                self._named.add(address)
            else:
                self._counts[address][refusal] += 1
                details = self._details[(address, refusal)]
                if detail is not None and len(details) < 3 and detail not in details:
                    details.append(detail)
        if first:
            log.warning("refused a connection from %s: %s%s (more from it are summed every "
                        "%.0f s)", address, refusal.text,
                        "" if detail is None else f" ({detail})", self.interval)

    def tick(self):
        """Log the sums of the interval that ended, if it has (the node's reaper calls this)."""
        now = time.monotonic()
        with self._lock:
            if now - self._since < self.interval:
                return
            counts, details, seconds = self._counts, self._details, now - self._since
            self._reset(now)
        if len(counts) > self.addresses_apart:
            total = sum((reasons for reasons in counts.values()), Counter())
            most = sorted(counts, key=lambda a: -sum(counts[a].values()))[:3]
            log.warning("refused %d more connection(s) from %d addresses in the last %.0f s: "
                        "%s; the most from %s", sum(total.values()), len(counts), seconds,
                        "; ".join(f"{r.text} x{n}" for r, n in total.most_common()),
                        ", ".join(f"{a} ({sum(counts[a].values())})" for a in most))
            return
        for address, reasons in counts.items():
            parts = []
            for refusal, n in reasons.most_common():
                said = details.get((address, refusal))
                parts.append(f"{refusal.text} x{n}" + (f" ({'; '.join(said)})" if said else ""))
            log.warning("refused %d more connection(s) from %s in the last %.0f s: %s",
                        sum(reasons.values()), address, seconds, "; ".join(parts))
