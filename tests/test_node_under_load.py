"""The node when peers are slow, hostile or wrong: each test replays one way it used to lose
an instance, lock out a listed peer or spend what an attacker chose (trickled association
requests and PDUs, codestream and command-set bombs, a metrics flood, a destination that
aborts, two objects under one UID, SIGTERM while peers trickle); test_node_faults.py has the
node's own world failing.
Real peers on loopback (pynetdicom, raw sockets); every loop is bounded in count and time, and
waits on the node's log or metrics rather than a fixed sleep."""
import json
import os
import socket
import struct
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("pynetdicom")

from dicomnet import (NODE_AET, Destination, NodeProcess, Trickler, ae,  # noqa: E402
                      associate_rq, dataset, echo, jpeg_ls_bomb, log_since, metric,
                      peak_rss_mb, store, wait_for)
from helpers import free_port  # noqa: E402
from pydicom.uid import JPEGLSLossless  # noqa: E402

GOOD_PEER = "XRAYINFER@127.0.0.1"
OTHER_PEER = "OTHER@127.0.0.2"
FAST = ("--setup-timeout", 3, "--idle-timeout", 3, "--max-object-mb", 16)


@pytest.fixture(scope="module")
def dest():
    d = Destination(abort_on=lambda ds: str(ds.get("PatientID", "")) == "ABORTS")
    yield d
    d.close()


@pytest.fixture(scope="module")
def node(dest, tmp_path_factory):
    n = NodeProcess(tmp_path_factory.mktemp("node"), dest.port, forward_aet=dest.aet,
                    allow=(GOOD_PEER, OTHER_PEER), extra=(*FAST, "--max-refusals", 2,), metrics=True)
    n.start()
    yield n
    n.stop()


# -- Trickling connections cannot lock a listed peer out; refusals counted, summed ----------------
def test_trickled_association_requests_neither_lock_out_nor_flood_the_log(node):
    mark = len(node.log.read_text())
    before = {r: metric(node, "refused_total", reason=r) for r in ("setup_deadline", "pending")}
    rq = associate_rq("EVIL")
    # from addresses no listed caller uses: two pending connections each at most
    tricklers = [Trickler(node.port, rq, bind=f"127.0.0.{3 + 2 * (k % 2)}") for k in range(8)]
    for t in tricklers:
        t.start()
    try:
        assert all(echo(node.port) for _ in range(5))  # the listed peer gets in, every time
    finally:
        for t in tricklers:
            t.join(60)
    print("trickled requests closed after (s):", sorted(round(t.closed_after, 1)
                                                       for t in tricklers if t.closed_after))
    # each closed: at once (beyond two pending per address) or at the 3 s set-up deadline
    assert all(t.closed_after is not None and t.closed_after < 30 for t in tricklers), \
        [t.closed_after for t in tricklers]
    wait_for(lambda: metric(node, "refused_total", reason="setup_deadline") >=
             before["setup_deadline"] + 4, timeout=30, what="deadline refusals counted")
    assert metric(node, "refused_total", reason="pending") >= before["pending"] + 4
    lines = [ln for ln in log_since(node, mark).splitlines() if "127.0.0.3" in ln]
    assert 1 <= len(lines) <= 2, lines  # the first at once, the rest summed


def test_refused_callers_are_counted_one_by_one_and_logged_in_sum(node):
    mark = len(node.log.read_text())
    before = metric(node, "refused_total", reason="unknown_peer")
    for _ in range(60):
        assert ae("EVIL").associate("127.0.0.1", node.port, ae_title=NODE_AET).is_rejected
    wait_for(lambda: metric(node, "refused_total", reason="unknown_peer") == before + 60,
             timeout=30, what="60 refusals counted")
    lines = [ln for ln in log_since(node, mark).splitlines() if "EVIL" in ln]
    print(f"60 refused associations: {len(lines)} log line(s)")
    assert len(lines) <= 2, lines


def test_a_malformed_association_request_is_refused_at_once_and_logged(node):
    mark = len(node.log.read_text())
    before = metric(node, "refused_total", reason="malformed")
    with socket.create_connection(("127.0.0.1", node.port), timeout=10,
                                  source_address=("127.0.0.6", 0)) as s:
        s.sendall(b"\x01\x00\x00\x00\x00\x10" + b"\xee" * 16)  # an A-ASSOCIATE-RQ of garbage
        s.settimeout(20)
        answer = s.recv(4096)
        assert answer[:1] in (b"\x07", b"")  # an A-ABORT, or closed
        while answer:  # then the node closes the connection
            answer = s.recv(4096)
    wait_for(lambda: metric(node, "refused_total", reason="malformed") == before + 1,
             timeout=30, what="the malformed request counted")
    assert "127.0.0.6: closed before a valid association request" in log_since(node, mark), \
        log_since(node, mark)


def test_silent_connections_from_a_listed_address_never_lock_it_out(tmp_path):
    """As many connections as one address may hold, silent, from the listed caller's own
    address, kept open (reopened as they are closed): the caller still gets in every time,
    its oldest silent connection making way."""
    from xray_infer.node.network import SILENT_AFTER
    node = NodeProcess(tmp_path / "node", free_port(), allow=(GOOD_PEER,), metrics=True).start()
    opened, stop = {}, threading.Event()

    def hold_four():  # the attacker: four silent connections at all times
        while not stop.is_set():
            for k in range(4):
                if k not in opened or opened[k][0].fileno() < 0 or _closed(opened[k][0]):
                    opened[k] = (socket.create_connection(("127.0.0.1", node.port), timeout=10),
                                 time.monotonic())
            stop.wait(0.05)
    attacker = threading.Thread(target=hold_four, daemon=True)
    attacker.start()
    try:
        # silent for longer than the node's own measure (it starts its clock when it accepts
        # the connection, later on a loaded machine): a second to spare
        wait_for(lambda: len(opened) == 4 and all(time.monotonic() - t >= SILENT_AFTER + 1.0
                                                  for _, t in opened.values()),
                 what="four connections silent for two seconds")
        assert all(echo(node.port) for _ in range(3))  # the listed peer gets in, every time
        assert metric(node, "refused_total", reason="pending") >= 1
    finally:
        stop.set()
        attacker.join(30)
        for sock, _ in opened.values():
            sock.close()
        node.stop()


def _closed(sock):
    """Whether the node closed ``sock`` (a read would return at once with nothing)."""
    import select
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


# -- A listed peer trickling a PDU is cut off at the idle deadline --------------------------------
def test_a_listed_peer_trickling_a_pdu_is_cut_off(node):
    before = metric(node, "refused_total", reason="idle")
    assoc = ae().associate("127.0.0.1", node.port, ae_title=NODE_AET)
    assert assoc.is_established
    raw = assoc.dul.socket.socket
    header = struct.pack(">BBL", 4, 0, 1000)  # a P-DATA-TF of 1,000 bytes, sent slowly
    t = Trickler(node.port, header + b"\x00" * 994, sock=raw, every=0.5, limit=40)
    t.run()
    print("trickled P-DATA closed after (s):", t.closed_after)
    assert t.closed_after is not None and t.closed_after < 30
    assert metric(node, "refused_total", reason="idle") == before + 1


# -- The command set counts -----------------------------------------------------------------------
def test_an_endless_command_set_is_cut_off(node):
    mark = len(node.log.read_text())
    assoc = ae().associate("127.0.0.1", node.port, ae_title=NODE_AET)
    assert assoc.is_established
    context = assoc.accepted_contexts[0].context_id
    fragment = b"\x00" * 16000
    pdv = struct.pack(">LBB", 2 + len(fragment), context, 0x01) + fragment  # command, not last
    pdu = struct.pack(">BBL", 4, 0, len(pdv)) + pdv
    raw, sent = assoc.dul.socket.socket, 0
    try:
        for _ in range(200):  # 3.2 MB at most: the node must cut it at 64 kB
            raw.sendall(pdu)
            sent += 1
    except OSError:
        pass
    wait_for(lambda: "a command set over 65536 bytes" in log_since(node, mark), timeout=30,
             what="the abort logged")
    wait_for(lambda: not assoc.is_established, timeout=30, what="the association aborted")


# -- A codestream that declares more than the header ----------------------------------------------
def test_a_codestream_declaring_more_than_rows_and_columns_is_refused_undecoded(node, tmp_path):
    import jpeg_ls
    from pynetdicom import AE
    from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation as DX
    a = AE(ae_title="XRAYINFER")
    a.add_requested_context(DX, JPEGLSLossless)

    def send(ds):
        assoc = a.associate("127.0.0.1", node.port, ae_title=NODE_AET)
        rsp = assoc.send_c_store(ds)
        assoc.release()
        return int(rsp.Status), str(rsp.get("ErrorComment", ""))
    honest = dataset(tmp_path, "JLS")  # the same path, warmed up by an honest JPEG-LS scan
    pixels = honest.pixel_array
    honest.PixelData = pydicom.encaps.encapsulate([bytes(jpeg_ls.encode(pixels))])
    honest["PixelData"].VR = "OB"
    honest.file_meta.TransferSyntaxUID = JPEGLSLossless
    assert send(honest) == (0, "")
    peak = peak_rss_mb(node.proc.pid)
    bomb = jpeg_ls_bomb(tmp_path)
    for _ in range(4):
        assert send(bomb) == (0xC000, "pixel data cannot be decoded safely")
    # decoded, 16384 x 16384 took 1.77 GB; refused by its header, it costs nothing
    print(f"JPEG-LS bomb x4: peak RSS {peak:.0f} MB before, {peak_rss_mb(node.proc.pid):.0f} "
          f"MB after")
    assert peak_rss_mb(node.proc.pid) < peak + 100
    assert "codestream declares 16384x16384 pixels where Rows x Columns say 512x512" in \
        node.log.read_text()


# -- Identifiers checked against their VR; no Error Comment echoes the object ---------------------
@pytest.mark.parametrize("attribute, value, comment", [
    *[("PatientID", v, "PatientID not a valid LO: one value, 64 chars, no controls")
      for v in ("A\\B", "A\x00B", "A\r\nB", "P" * 65)],
    *[("Modality", v, "Modality not a valid CS: capitals, digits, 16 chars")
      for v in ("DX\n", "dx", "DX\\CR", "D" * 17)]])
def test_an_identifier_that_is_no_value_of_its_vr_is_refused(node, tmp_path, attribute, value,
                                                              comment):
    ds = dataset(tmp_path, "VALID")
    setattr(ds, attribute, value)
    assert store([ds], node.port) == [(0xC000, comment)]


def test_no_error_comment_carries_a_value_from_the_object(node, tmp_path):
    ds = dataset(tmp_path, "ECHO", PhotometricInterpretation="PWNED-VALUE")
    [(code, comment)] = store([ds], node.port)
    assert code == 0xC000 and "PWNED" not in comment


# -- Two objects under one UID --------------------------------------------------------------------
def test_a_second_object_under_a_spooled_uid_is_refused_and_a_resend_is_one(tmp_path):
    n = NodeProcess(tmp_path / "n", free_port(), allow=(GOOD_PEER, OTHER_PEER)).start()
    try:  # the destination is down: what is acknowledged stays in the spool to be counted
        first = dataset(tmp_path, "FIRST")
        other = dataset(tmp_path, "FIRST")
        other.SOPInstanceUID = first.SOPInstanceUID
        other.PixelData = bytes(255 - b for b in first.PixelData)
        assert store([first], n.port) == [(0, "")]
        assert store([first], n.port) == [(0, "")]  # the same object again
        assert store([other], n.port, calling="OTHER", bind="127.0.0.2") == \
            [(0x0111, "another object under this SOP Instance UID")]
        [spooled] = n.spooled()
        assert pydicom.dcmread(spooled).PixelData == first.PixelData
    finally:
        n.stop()


# -- A destination that aborts on one instance holds back no other --------------------------------
def test_an_abort_on_one_instance_costs_that_instance_alone(node, dest, tmp_path):
    aborts = dataset(tmp_path, "ABORTS")
    others = [dataset(tmp_path, f"AFTER-ABORT-{i}") for i in range(4)]
    assert store([aborts, *others], node.port) == [(0, "")] * 5
    wait_for(lambda: all(f"AFTER-ABORT-{i}" in dest.patients("SR") for i in range(4)),
             timeout=180, what="the four others delivered")
    wait_for(lambda: any("aborted the association on it (2 times)" in f.read_text()
                         for f in (node.spool / "failed").glob("*.json")),
             timeout=180, what="the aborting instance quarantined")


# -- The metrics server is bounded and local; health tells the truth ------------------------------
def test_a_metrics_flood_costs_nothing_else_and_health_answers(node, tmp_path):
    # 127.0.0.1 only, whatever --host says: another local address does not reach it
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", node.metrics_port), timeout=5).close()
    fds = len(os.listdir(f"/proc/{node.proc.pid}/fd"))
    idle = []
    for _ in range(200):
        try:
            idle.append(socket.create_connection(("127.0.0.1", node.metrics_port), timeout=5))
        except OSError:
            break
    try:
        print(f"metrics flood: {len(idle)} connections opened, node descriptors {fds} -> "
              f"{len(os.listdir(f'/proc/{node.proc.pid}/fd'))}")
        assert len(os.listdir(f"/proc/{node.proc.pid}/fd")) < fds + 40
        assert store([dataset(tmp_path, "DURING-FLOOD")], node.port) == [(0, "")]
    finally:
        for s in idle:
            s.close()
    results = []

    def health():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/healthz",
                                        timeout=30) as r:
                results.append(r.status)
        except urllib.error.HTTPError as e:
            results.append(e.code)
        except OSError:  # refused while the connection cap is full
            results.append(None)
    wait_for(lambda: health() or results[-1] == 200, timeout=60, what="healthy")
    threads = [threading.Thread(target=health) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results[-12:] == [200] * 12  # concurrent checks do not trip each other


def test_health_is_503_below_the_spool_reserve(tmp_path):
    import shutil
    spool_disk = shutil.disk_usage(tmp_path).free // 2 ** 20
    port = free_port()
    n = NodeProcess(tmp_path / "n", free_port(), allow=(GOOD_PEER,),
                    extra=("--metrics-port", port, "--min-free-mb", spool_disk + 10_000)).start()
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30)
        assert e.value.code == 503
        state = json.loads(e.value.read())
        assert state["spool_writable"] is True and state["spool_free_mb"] < \
            state["spool_reserve_mb"]
    finally:
        n.stop()


# -- SIGTERM does not wait on anyone --------------------------------------------------------------
def test_sigterm_exits_promptly_whatever_the_peers_do(tmp_path):
    import signal
    # peers given 600 s: a node that waited on them would outlast the wait below
    n = NodeProcess(tmp_path / "n", free_port(), allow=(GOOD_PEER,),
                    extra=("--setup-timeout", 600, "--idle-timeout", 600)).start()
    tricklers = [Trickler(n.port, associate_rq("EVIL"), bind="127.0.0.2", every=1, limit=60)
                 for _ in range(2)]
    for t in tricklers:
        t.start()
    listed = ae().associate("127.0.0.1", n.port, ae_title=NODE_AET)
    assert listed.is_established
    pdu = Trickler(n.port, struct.pack(">BBL", 4, 0, 1000) + b"\x00" * 994,
                   sock=listed.dul.socket.socket, every=1, limit=60)
    pdu.start()
    wait_for(lambda: len(os.listdir(f"/proc/{n.proc.pid}/fd")) > 0, what="the node up")
    start = time.monotonic()
    n.proc.send_signal(signal.SIGTERM)
    n.proc.wait(120)  # TimeoutExpired if it waited on the peers
    print(f"SIGTERM with trickling peers: exited after {time.monotonic() - start:.1f} s")
    assert n.proc.returncode == 0 and "stopped" in n.log.read_text()


def test_a_listed_peer_trickling_data_sets_holds_at_most_half_the_in_flight_budget(tmp_path):
    """Four slots in flight (64 MiB in units of 16): a peer trickling four large data sets on
    four associations holds two; another sender's instance is received at once, not after the
    tricklers' idle deadlines."""
    dest = Destination()
    node = NodeProcess(tmp_path / "node", dest.port, forward_aet=dest.aet,
                       allow=(GOOD_PEER, OTHER_PEER),
                       extra=("--max-object-mb", 16, "--max-inflight-mb", 64,
                              "--idle-timeout", 20), metrics=True).start()
    big = dataset(tmp_path, "TRICKLED")
    big.Rows, big.Columns, big.BitsAllocated, big.BitsStored, big.HighBit = 2000, 2000, 16, 12, 11
    big.PixelData = np.zeros((2000, 2000), np.uint16).tobytes()  # 8 MB, sent slowly
    stop, started, sending = threading.Event(), [], []

    def trickle():
        a = ae()
        assoc = a.associate("127.0.0.1", node.port, ae_title=NODE_AET)
        if not assoc.is_established:
            return
        transport = assoc.dul.socket  # pynetdicom's AssociationSocket
        send = transport.send

        def slowly(data):  # 4 kB every 0.05 s: one PDU takes seconds
            sending.append(threading.get_ident())  # the command first, then the data set
            for i in range(0, len(data), 4096):
                stop.wait(0.05)  # the trickler's pace (no wait once the test is done)
                send(data[i:i + 4096])
        transport.send = slowly
        started.append(1)
        try:
            assoc.send_c_store(big)
        except Exception:
            pass
        finally:
            assoc.abort()
    tricklers = [threading.Thread(target=trickle, daemon=True) for _ in range(4)]
    try:
        for t in tricklers:
            t.start()
        # every trickler has sent its command and begun its data set (each such PDU takes
        # a fraction of a second), and the trickling has gone on for a good many PDUs since
        wait_for(lambda: len(started) == 4 and len(sending) >= 60, timeout=60,
                 what="four data sets under way")
        assert metric(node, "inflight_datasets") == 2  # the share of one address: half
        t0 = time.monotonic()
        assert store([dataset(tmp_path, "ON-TIME")], node.port, calling="OTHER",
                     bind="127.0.0.2") == [(0, "")]
        waited = time.monotonic() - t0
        print(f"the other sender's instance took {waited:.1f} s beside the trickler")
        assert waited < 15  # not the trickler's 20 s idle deadline
    finally:
        stop.set()
        for t in tricklers:
            t.join(60)
        node.stop()
        dest.close()
