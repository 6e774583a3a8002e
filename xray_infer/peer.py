"""A DICOM application entity on the network: ``HOST:PORT[:AET]`` (no imports of note, so
the command line can check it before loading anything)."""
from dataclasses import dataclass


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
        title = parts[2] if len(parts) == 3 else cls.ae_title
        if not 0 < len(title) <= 16:
            raise ValueError(f"{text!r}: an AE title has 1 to 16 characters")
        return cls(parts[0], port, title)

    def __str__(self):
        return f"{self.ae_title}@{self.host}:{self.port}"
