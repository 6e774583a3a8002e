"""What the node accepts and from whom: the allowlist, the resource limits and their defaults
(the command line reads its defaults from here), and the checks on an instance's identifiers.
No network imports, so the command line can check its arguments before loading anything."""
import re
import socket
from dataclasses import dataclass, field

from ..peer import check_ae_title
from ..destinations import DICOM

DEFAULT_AE_TITLE = "XRAYINFER"
DEFAULT_HOST = "127.0.0.1"

#: PS3.5 9.1: components of digits without leading zeros, separated by dots, 64 characters.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_uid(text):
    return isinstance(text, str) and len(text) <= 64 and _UID.fullmatch(text) is not None


def printable(value, limit=80):
    """``value`` safe for one log line: control characters escaped, at most ``limit`` characters
    (a peer chooses these strings; it must not be able to forge or flood log lines)."""
    text = str(value)
    out = text.encode("unicode_escape").decode("ascii")[:limit]
    return out + ("..." if len(text) > limit else "")


@dataclass(frozen=True)
class Caller:
    """One allowed peer: ``AET@HOST``; HOST an address or a name, resolved at start."""
    ae_title: str
    host: str

    @classmethod
    def parse(cls, text):
        title, at, host = text.rpartition("@")
        if not at or not host:
            raise ValueError(f"{text!r} is not AET@HOST")
        return cls(check_ae_title(title), host)

    def addresses(self):
        """The addresses HOST resolves to (a name that does not resolve is an error)."""
        try:
            infos = socket.getaddrinfo(self.host, None, proto=socket.IPPROTO_TCP)
        except socket.gaierror as e:
            raise ValueError(f"allowed caller {self}: {self.host} does not resolve ({e})") \
                from None
        return {info[4][0] for info in infos}

    def __str__(self):
        return f"{self.ae_title}@{self.host}"


@dataclass(frozen=True)
class Limits:
    """Every number that bounds what one peer, or all together, can make the node hold, and
    how long anything may take. The defaults fit radiographs: a 4,300 x 4,300 16-bit detector
    image is 37 MB."""
    max_associations: int = 8        # associations established at once, all peers together
    max_per_peer: int = 4            # connections open at once from one address
    max_pending: int = 16            # connections not yet associated, all addresses together
    max_pending_per_peer: int = 2    # connections not yet associated, from one address
    setup_timeout: float = 10.0      # connect -> associated (TLS handshake and RQ): a deadline
    network_timeout: float = 30.0    # associated: each message completes within this of the last
    dimse_timeout: float = DICOM.timeout  # waiting on the destination (destinations.py)
    max_object_mb: int = 64          # one data set as received; also bounds the declared image
    max_command_bytes: int = 65536   # one command set (a C-STORE's is about 200 bytes)
    max_pdu_bytes: int = 1 << 20     # one PDU, whatever it declares (an A-ASSOCIATE-RQ with many
    #                                  contexts is the largest legitimate one)
    max_inflight_mb: int = 256       # data sets being received, all associations together
    min_free_mb: int = 512           # spool disk kept free: below it, instances get 0xA700
    max_refusals: int = 5            # destination refusals before an instance is quarantined
    retry_base: float = 2.0          # seconds; doubled per refusal, capped at retry_cap
    retry_cap: float = 300.0
    backoff_cap: float = 60.0        # seconds: the longest wait after a failed batch or worker
    decoders: int = 1                # instances checked (decoded) at once while receiving
    stall_seconds: float = 600.0     # /healthz is 503 when pending work made no progress this long
    refusal_log_interval: float = 10.0   # refusals of connections are summed over this
    metrics_connections: int = 16    # open connections to the metrics server
    metrics_timeout: float = 5.0     # one metrics request, from connect to answer: a deadline
    stop_timeout: float = 5.0        # what a stop waits for the forwarder's batch in flight

    @property
    def max_object_bytes(self):
        return self.max_object_mb * 2 ** 20

    @property
    def inflight_slots(self):
        """Data sets received at once: each may grow to ``max_object_mb`` before it is known
        how large it is, so the budget is counted in whole objects (no deadlock of partial
        reservations)."""
        return max(1, self.max_inflight_mb // self.max_object_mb)

    @property
    def inflight_per_peer(self):
        """Slots one address may hold at once: half the budget (at least one), so a peer
        trickling data sets on every association it may open leaves the others room."""
        return max(1, self.inflight_slots // 2)


@dataclass(frozen=True)
class Allowlist:
    """Who may associate: (calling AE title, address) pairs; ``any`` lets everyone in."""
    callers: tuple = ()
    any: bool = False
    _resolved: frozenset = field(default=frozenset(), compare=False)

    def resolved(self):
        """A copy with every HOST resolved now (ValueError for a name that does not); itself
        when that is done already (names are looked up once)."""
        if self._resolved or not self.callers:
            return self
        pairs = frozenset((c.ae_title, a) for c in self.callers for a in c.addresses())
        return Allowlist(self.callers, self.any, pairs)

    def admits(self, ae_title, address):
        return self.any or (ae_title.strip(), address) in self._resolved

    def knows(self, address):
        """Whether a listed caller may call from ``address`` (before its AE title is known: a
        connection from it is not an unknown one)."""
        return self.any or any(a == address for _, a in self._resolved)
