"""What the node accepts and from whom: the allowlist, the resource limits and their defaults
(the command line reads its defaults from here), and the checks on an instance's identifiers.
No network imports, so the command line can check its arguments before loading anything."""
import re
import socket
from dataclasses import dataclass, field

DEFAULT_AE_TITLE = "XRAYINFER"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_BATCH_SIZE = 8

#: PS3.5 9.1: components of digits without leading zeros, separated by dots, 64 characters.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
#: PS3.5 6.2, AE: up to 16 characters of the default repertoire, no backslash or controls.
_AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")


def is_uid(text):
    return isinstance(text, str) and len(text) <= 64 and _UID.fullmatch(text) is not None


def check_ae_title(text):
    """``text`` stripped, or ValueError: 1 to 16 printable characters, not all spaces."""
    if not _AE_TITLE.fullmatch(text or "") or not text.strip():
        raise ValueError(f"{text!r} is not an AE title (1 to 16 printable characters, no "
                         f"backslash)")
    return text.strip()


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
    """Bounds on what one peer, or all together, can make the node hold.

    The defaults fit radiographs: a 4,300 x 4,300 16-bit detector image is 37 MB."""
    max_associations: int = 8        # open associations, all peers together
    max_per_peer: int = 4            # open connections from one address
    max_object_mb: int = 64          # one data set as received; also bounds the declared image
    min_free_mb: int = 512           # spool disk kept free: below it, instances get 0xA700
    acse_timeout: float = 10.0       # connect -> A-ASSOCIATE-RQ, TLS handshake included
    network_timeout: float = 30.0    # an idle association is closed after this
    dimse_timeout: float = 30.0
    max_refusals: int = 5            # destination refusals before an instance is quarantined
    retry_base: float = 2.0          # seconds; doubled per refusal, capped at retry_cap
    retry_cap: float = 300.0
    decoders: int = 1                # instances checked (decoded) at once while receiving

    @property
    def max_object_bytes(self):
        return self.max_object_mb * 2 ** 20


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
