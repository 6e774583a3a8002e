"""A DICOM application entity on the network: ``HOST:PORT[:AET]`` (no imports of note, so
the command line can check it before loading anything)."""
import re
from dataclasses import dataclass

#: PS3.5 6.2, AE: up to 16 characters of the default repertoire, no backslash or controls.
_AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")


def check_ae_title(text):
    """``text`` stripped, or ValueError: 1 to 16 printable characters, not all spaces (the one
    AE-title rule of this package: callers, the node's own and a peer's)."""
    if not _AE_TITLE.fullmatch(text or "") or not text.strip():
        raise ValueError(f"{text!r} is not an AE title (1 to 16 printable characters, no "
                         f"backslash)")
    return text.strip()


@dataclass(frozen=True)
class Peer:
    host: str
    port: int
    ae_title: str = "ANY-SCP"

    @classmethod
    def parse(cls, text):
        """``HOST:PORT[:AET]``."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1].isdigit():
            raise ValueError(f"{text!r} is not HOST:PORT[:AE_TITLE]")
        port = int(parts[1])
        if not 0 < port < 65536:
            raise ValueError(f"{text!r}: port must be 1 to 65535")
        try:
            title = check_ae_title(parts[2]) if len(parts) == 3 else cls.ae_title
        except ValueError as e:
            raise ValueError(f"{text!r}: {e}") from None
        return cls(parts[0], port, title)

    def __str__(self):
        return f"{self.ae_title}@{self.host}:{self.port}"
