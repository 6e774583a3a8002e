"""The node's spool: instances received and acknowledged, waiting for their results to be
delivered.

An instance is written to ``incoming/`` atomically and durably (temporary file, fsync, rename,
fsync of the directory) before it is acknowledged, and leaves only when its results were
delivered (``done``) or it is quarantined in ``failed/`` with the reason (``fail``). File names
are a hash of the SOP Instance UID, never the UID's text, so nothing a peer sends chooses where a
file goes; the same instance sent twice is one file. Files are 0600 and folders 0700: they hold
patient data.
"""
import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from ..errors import XrayInferError

TMP_SUFFIX = ".tmp"


class SpoolFull(XrayInferError, OSError):
    """Less free space than the reserve: the instance is refused as retryable (0xA700)."""


class Conflict(XrayInferError):
    """Another object is spooled under this SOP Instance UID (two different objects under one
    UID: neither may silently replace the other)."""


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def name_for(uid):
    return hashlib.sha256(uid.encode("ascii")).hexdigest()[:40] + ".dcm"


class Spool:
    def __init__(self, root, min_free_bytes=0):
        self.root = Path(root)
        self.incoming, self.failed = self.root / "incoming", self.root / "failed"
        self.min_free_bytes = min_free_bytes
        for d in (self.root, self.incoming, self.failed):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)

    def sweep(self):
        """Remove temporary files a crash left behind (call before receiving); how many."""
        n = 0
        for d in (self.incoming, self.failed):
            for tmp in d.glob(f".*{TMP_SUFFIX}"):
                tmp.unlink(missing_ok=True)
                n += 1
        return n

    def check_writable(self):
        """Raise OSError when the spool cannot take a file (read-only, gone, not ours); each
        probe is a file of its own, so checks at the same time do not trip each other."""
        fd, probe = tempfile.mkstemp(prefix=".probe", suffix=TMP_SUFFIX, dir=self.incoming)
        os.close(fd)
        os.unlink(probe)

    def free_bytes(self):
        return shutil.disk_usage(self.incoming).free

    def _temporary(self, folder, name, data):
        """``data`` in a durable temporary file beside ``name``."""
        tmp = folder / f".{name}.{os.getpid()}.{threading.get_ident():x}{TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _write(self, folder, name, data):
        tmp = self._temporary(folder, name, data)
        try:
            os.replace(tmp, folder / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(folder)
        return folder / name

    def put(self, uid, data):
        """Store one instance durably. The same object sent again is one file; another object
        under the same UID is a Conflict (the spooled one is kept). SpoolFull below the
        reserve, OSError on a write error."""
        if self.free_bytes() - len(data) < self.min_free_bytes:
            raise SpoolFull(f"less than {self.min_free_bytes // 2 ** 20} MB would be left free")
        name = name_for(uid)
        path = self.incoming / name
        tmp = self._temporary(self.incoming, name, data)
        try:
            for _ in range(3):
                try:
                    os.link(tmp, path)  # atomic, and never over a file already there
                    break
                except FileExistsError:
                    try:
                        if path.read_bytes() == data:
                            return path  # a resend of the same object
                    except FileNotFoundError:  # delivered meanwhile: spool it anew
                        continue
                    raise Conflict(uid) from None
            else:
                raise OSError(f"{name}: the spool kept changing under it; not stored")
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.incoming)
        return path

    def quarantined(self):
        """How many instances wait in ``failed/`` for someone to look at them."""
        return sum(1 for _ in self.failed.glob("*.dcm"))

    def pending(self):
        """Spooled instances, oldest first."""
        entries = []
        for p in self.incoming.glob("*.dcm"):
            try:
                entries.append((p.stat().st_mtime, p))
            except FileNotFoundError:  # removed meanwhile
                pass
        return [p for _, p in sorted(entries)]

    def done(self, path):
        """The instance's results were delivered: remove it."""
        os.unlink(path)
        _fsync_dir(self.incoming)

    def fail(self, path, reason):
        """Quarantine an instance in ``failed/`` beside a JSON note of why."""
        note = json.dumps({"reason": reason}, indent=1).encode()
        self._write(self.failed, Path(path).stem + ".json", note)
        os.replace(path, self.failed / Path(path).name)
        _fsync_dir(self.failed)
        _fsync_dir(self.incoming)
