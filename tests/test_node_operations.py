"""The node's own housekeeping under a hostile or faulty world: its spool (private files, partial
files swept, a disk below its reserve, a spool that turns read-only), ``send`` against a peer
that aborts and over folders of extensionless files, argument errors, and SIGTERM with peers
holding associations open. Real peers on loopback."""
import shutil
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("pynetdicom")

from dicomnet import (NODE_AET, Destination, NodeProcess, ae, chest_dicoms,  # noqa: E402
                      dataset, passes_later, send, store, wait_for)
from helpers import free_port, run_cli  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

GOOD_PEER = "XRAYINFER@127.0.0.1"


# -- The spool ------------------------------------------------------------------------------------
def test_spool_files_are_private_and_partial_files_are_swept_at_start(tmp_path):
    folder = tmp_path / "n"
    stale = folder / "spool" / "incoming" / ".abc.dcm.1.2.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half an instance")
    n = NodeProcess(folder, free_port(), allow=(GOOD_PEER,)).start()  # destination down
    try:
        assert not stale.exists()
        assert store([dataset(tmp_path)], n.port) == [(0, "")]
        for d in (n.spool, n.spool / "incoming", n.spool / "failed"):
            assert stat.S_IMODE(d.stat().st_mode) == 0o700
        [f] = n.spooled()
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    finally:
        n.stop()
    assert "removed 1 partial file(s)" in n.log.read_text()


def test_below_the_free_space_reserve_instances_are_refused_as_retryable(tmp_path):
    n = NodeProcess(tmp_path / "n", free_port(), allow=(GOOD_PEER,),
                    extra=("--min-free-mb", 10 ** 9)).start()
    try:
        [(code, comment)] = store([dataset(tmp_path)], n.port)
        assert code == 0xA700 and comment == "out of storage; retry later"
        assert list((n.spool / "incoming").iterdir()) == []
    finally:
        n.stop()


def test_a_spool_that_turns_read_only_sends_each_result_once_and_leaks_no_path(tmp_path):
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    port = free_port()
    n = NodeProcess(tmp_path / "n", port, forward_aet="DEST", allow=(GOOD_PEER,),
                    metrics=True).start()
    incoming = n.spool / "incoming"
    dest = None
    try:
        assert store([dataset(tmp_path, "RO")], n.port) == [(0, "")]
        # Immutable: root cannot write or remove there either (file modes do not bind root).
        if subprocess.run(["chattr", "+i", str(incoming)], timeout=60).returncode != 0:
            pytest.skip("this file system does not support the immutable attribute")
        dest = Destination(port=port)
        wait_for(lambda: len(dest.stored) == 2, timeout=120, what="SR and SC delivered")
        [(code, comment)] = store([dataset(tmp_path, "RO-2")], n.port)
        assert code == 0xA700 and "/" not in comment and str(n.spool) not in comment
        wait_for(lambda: "cannot be removed from the spool" in n.log.read_text(), timeout=60,
                 what="the removal failure logged")
        passes_later(n)
        assert len(dest.calls) == 2  # delivered once, not at each pass
    finally:
        subprocess.run(["chattr", "-i", str(incoming)], timeout=60)
        n.stop()
        if dest:
            dest.close()
    assert "cannot be removed from the spool" in n.log.read_text()


# -- Send -----------------------------------------------------------------------------------------
def test_send_to_a_peer_that_aborts_reports_every_file(tmp_path):
    d = Destination(abort_after=2)
    try:
        files = chest_dicoms(tmp_path / "in", 4, "ABORT")
        p = send(files, d.port, d.aet)
        assert p.returncode == 1
        assert p.stdout.count("stored (0x0000)") == 2, p.stdout
        assert sum(str(f) in p.stdout for f in files) == 4  # each file reported
        assert "2 stored, 2 not stored" in p.stderr and "Traceback" not in p.stderr
    finally:
        d.close()


def test_send_finds_extensionless_dicom_files_and_holds_one_file_at_a_time(tmp_path):
    d = Destination()
    try:
        folder = tmp_path / "archive"
        folder.mkdir()
        for i, f in enumerate(chest_dicoms(tmp_path / "in", 3, "NOEXT")):
            shutil.move(f, folder / f"instance{i}")  # named by number alone, as archives do
        (folder / "README").write_text("not DICOM")
        p = send([folder], d.port, d.aet)
        assert p.returncode == 0 and p.stdout.count("stored (0x0000)") == 3, p.stderr
        # 30 files of 8 MB: memory stays near one file's, not 240 MB.
        big = tmp_path / "big"
        ds = dataset(tmp_path, "BIG-SEND")
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 2000, 2000, 16, 12, 11
        ds.PixelData = np.zeros((2000, 2000), np.uint16).tobytes()
        big.mkdir()
        for i in range(30):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.save_as(big / f"{i}.dcm", enforce_file_format=True)
        code = ("import resource, sys; from xray_infer.cli import main; rc = main(sys.argv[1:]); "
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
                "sys.exit(rc)")

        def peak_mb(*paths):
            p = subprocess.run([sys.executable, "-c", code, "send", *map(str, paths), "--to",
                                f"127.0.0.1:{d.port}:{d.aet}", "-q"], capture_output=True,
                               text=True, timeout=300)
            assert p.returncode == 0, p.stderr
            return int(p.stderr.split()[-1]) / 1024
        one, thirty = peak_mb(big / "0.dcm"), peak_mb(big)
        assert thirty - one < 60, (one, thirty)  # the 29 more files add up to 232 MB
    finally:
        d.close()


# -- Operations -----------------------------------------------------------------------------------
@pytest.mark.parametrize("option, message", [
    (("--port", "70000"), "is not a port"),
    (("--ae-title", "A" * 25), "is not an AE title"),
    (("--spool", "/proc/none/spool"), "--spool /proc/none/spool: not usable"),
    (("--allow", "nobody"), "is not AET@HOST"),
    (("--tls-cert", "/etc/hostname"), "TLS needs all of"),
])
def test_listen_argument_errors_are_usage_errors_before_the_model_loads(option, message):
    args = {"--port": "4242", "--forward": "127.0.0.1:4243:PACS", "--allow-any": None}
    args.update(dict([option]))
    argv = [a for k, v in args.items() for a in ((k,) if v is None else (k, v))]
    p = run_cli("listen", *argv, timeout=120)
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_sigterm_with_idle_associations_open_exits_promptly(tmp_path):
    n = NodeProcess(tmp_path / "n", free_port(), allow=(GOOD_PEER,),
                    extra=("--idle-timeout", 600)).start()
    held = [ae().associate("127.0.0.1", n.port, ae_title=NODE_AET) for _ in range(2)]
    assert all(a.is_established for a in held)
    n.proc.send_signal(signal.SIGTERM)
    n.proc.wait(120)  # TimeoutExpired if it waited out the associations' 600 s, as it once did
    assert n.proc.returncode == 0 and "stopped" in n.log.read_text()
    wait_for(lambda: not any(a.is_established for a in held), timeout=10, what="aborted")


def test_refusals_from_many_addresses_are_summed_in_one_line(caplog):
    """500 addresses refused: the first few named at once, the rest in one line an interval,
    never a line each (439 lines in 30 s before)."""
    import logging

    from xray_infer.node.metrics import NodeMetrics
    from xray_infer.node.refusals import Refusal, RefusalLog
    refusals = RefusalLog(NodeMetrics(lambda: 0), interval=0.0)
    with caplog.at_level(logging.WARNING, logger="xray_infer.node"):
        for i in range(500):
            for _ in range(2):
                refusals.add(f"10.0.{i // 250}.{i % 250}", Refusal.UNKNOWN_PEER)
        refusals.tick()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == refusals.first_lines + 1, len(lines)
    assert "refused 980 more connection(s) from 500 addresses" in lines[-1]
    assert "not on the allowlist x980" in lines[-1]
