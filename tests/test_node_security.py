"""The node as a hostile peer finds it: each test is one way in that used to work (path
traversal, relaying for unknown callers, memory and connection exhaustion, poisoned retries,
log forgery...). The peers are real: pynetdicom clients and servers, dcmtk's tools, and the node
itself as a process on loopback. No Orthanc needed (test_node_tls.py covers it). Its spool,
send and stopping: test_node_operations.py."""
import json
import socket
import struct
import subprocess
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("pynetdicom")

from dicomnet import (NODE_AET, Destination, NodeProcess, ae, chest_dicoms,  # noqa: E402
                      dataset, dcmtk, log_since, passes_later, peak_rss_mb, send, status, store,
                      wait_for)
from helpers import free_port, run_cli  # noqa: E402
from xray_infer.node.spool import name_for  # noqa: E402
from pydicom.uid import RLELossless  # noqa: E402
from pynetdicom import AE  # noqa: E402

GOOD_PEER = "XRAYINFER@127.0.0.1"
OTHER_PEER = "OTHER@127.0.0.2"  # another loopback address: another host, as the node sees it
NODE_OPTIONS = ("--max-object-mb", 16, "--max-refusals", 2, "--idle-timeout", 3)


def refuse_poison(ds):
    """The destination refuses results for the patient POISON (a PACS that does not know it)."""
    if str(ds.get("PatientID", "")) == "POISON":
        return status(0xC001, "unknown patient")
    return None


@pytest.fixture(scope="module")
def dest():
    d = Destination(answer=refuse_poison)
    yield d
    d.close()


@pytest.fixture(scope="module")
def node(dest, tmp_path_factory):
    n = NodeProcess(tmp_path_factory.mktemp("node"), dest.port, forward_aet=dest.aet,
                    allow=(GOOD_PEER, OTHER_PEER), extra=(*NODE_OPTIONS,), metrics=True)
    n.start()
    yield n
    n.stop()


# -- The spool file is named after a hash, never the UID's text -----------------------------------
def test_a_uid_that_is_a_path_is_refused_and_nothing_is_written_outside_the_spool(node, tmp_path):
    target = node.spool.parent / "x"  # beside the spool: incoming/../../x
    target.mkdir()
    uid = "./../../x/PWNED"  # the old node wrote incoming/{uid}.dcm, that is x/PWNED.dcm
    ds = dataset(tmp_path, SOPInstanceUID=uid)
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    [(code, comment)] = store([ds], node.port)
    assert code == 0xC000 and "not a valid UID" in comment
    assert list(target.iterdir()) == []
    good = dataset(tmp_path)
    assert store([good], node.port) == [(0, "")]
    names = [p.name for p in (node.spool / "incoming").iterdir()] + \
        [p.name for p in (node.spool / "failed").iterdir()]
    assert all(str(good.SOPInstanceUID) not in n for n in names)  # hashed names only


# -- Only listed callers; the called AE title must be the node's ----------------------------------
def test_unknown_callers_are_rejected_at_association_and_nothing_is_relayed(node, dest, tmp_path):
    mark = len(node.log.read_text())
    ds = dataset(tmp_path, "RELAY")
    assert store([ds], node.port, calling="EVIL") == "rejected"
    assert store([ds], node.port, bind="127.0.0.3") == "rejected"   # listed AE, other host
    assert store([ds], node.port, calling="OTHER") == "rejected"    # OTHER is listed on .2 only
    assert store([ds], node.port, called="ANY-SCP") == "rejected"
    p = send([chest_dicoms(tmp_path / "f", 1, "RELAY")[0]], node.port, NODE_AET,
             "--ae-title", "EVIL")
    assert p.returncode == 1 and "calling AE title not recognised" in p.stderr
    # logged at once or, when the address was refused moments ago, in the interval's sum
    wait_for(lambda: all(text in log_since(node, mark) for text in (
        "from 127.0.0.1", "not on the allowlist", "calling AE title EVIL", "from 127.0.0.3",
        "called AE title is not this node's", "called AE title ANY-SCP")), timeout=60,
        what="refusals logged")
    # each refused at the association: nothing of theirs reached the spool, or the destination
    assert not any(d.PatientID == "RELAY" for d in dest.calls)
    assert store([ds], node.port, calling="OTHER", bind="127.0.0.2") == [(0, "")]


def test_listen_needs_an_allowlist_and_listens_on_loopback_by_default(tmp_path):
    p = run_cli("listen", "--port", "4242", "--forward", "127.0.0.1:4243:PACS", "--spool",
                tmp_path / "s", timeout=120)
    assert p.returncode == 2 and "--allow AET@HOST" in p.stderr
    assert not (tmp_path / "s").exists()  # nothing touched before the arguments are checked
    from xray_infer.cli import build_parser
    args = build_parser().parse_args(["listen", "--port", "1", "--forward", "h:2"])
    assert args.host == "127.0.0.1"


# -- Memory a peer chooses ------------------------------------------------------------------------
def rle_bomb(tmp_path, rows, cols):
    """A DX whose RLE pixel data (about 2 MB) decodes to rows x cols 16-bit zeros."""
    run = b""
    left = cols
    while left:
        k = min(left, 128)
        run += bytes([257 - k, 0]) if k > 1 else b"\x00\x00"
        left -= k
    segment = run * rows
    segment += b"\x00" * (len(segment) % 2)
    header = struct.pack("<16L", 2, 64, 64 + len(segment), *[0] * 13)
    ds = dataset(tmp_path, "BOMB")
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = rows, cols, 16, 16, 15
    ds.PixelData = pydicom.encaps.encapsulate([header + segment * 2])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    return ds


def test_pixel_and_size_bombs_are_refused_before_memory_is_spent(node, tmp_path):
    bomb = rle_bomb(tmp_path, 8000, 8000)  # 128 MB of pixels declared, 2 MB sent
    big = dataset(tmp_path, "BIG")  # 24 MB of pixels sent, over the node's 16 MB limit
    big.Rows, big.Columns, big.BitsAllocated, big.BitsStored, big.HighBit = 3000, 4000, 16, 12, 11
    big.PixelData = np.zeros((3000, 4000), np.uint16).tobytes()
    results = [None] * 4

    def one(k):  # four at once: as many as one host may open
        results[k] = store([bomb if k < 2 else big], node.port)
    threads = [threading.Thread(target=one, args=(k,)) for k in range(4)]
    mark = len(node.log.read_text())
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results[:2] == [[(0xC000, "declared image over 16 MB")]] * 2, results
    assert results[2:] == [[(None, "")]] * 2, results  # aborted while being received
    assert log_since(node, mark).count("aborted: a data set over 16 MB") == 2
    assert peak_rss_mb(node.proc.pid) < 1500
    wait_for(lambda: store([], node.port) == [], timeout=60, what="the node taking calls again")
    assert store([bomb], node.port) == [(0xC000, "declared image over 16 MB")]


def test_other_sop_classes_are_refused_in_negotiation(node, tmp_path):
    from pydicom.data import get_testdata_file
    ct, sr = get_testdata_file("CT_small.dcm"), get_testdata_file("test-SR.dcm")
    [dx] = chest_dicoms(tmp_path, 1, "NEGOTIATED")
    p = send([ct, sr, dx], node.port, NODE_AET)
    assert p.returncode == 1
    assert p.stdout.count("not sent: No presentation context") == 2, p.stdout
    assert f"{dx}: stored (0x0000)" in p.stdout
    p = send([ct], node.port, NODE_AET)
    assert p.returncode == 1 and "accepts none of what was offered: CT Image Storage" in p.stderr


# -- One host cannot lock everyone out ------------------------------------------------------------
def test_idle_and_silent_connections_from_one_host_do_not_lock_out_others(node):
    held = [ae().associate("127.0.0.1", node.port, ae_title=NODE_AET) for _ in range(6)]
    try:
        assert sum(a.is_established for a in held) == 4  # --max-per-peer default
        silent = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(10)]
        for s in silent:  # refused at once: the host's four connections are taken
            s.settimeout(10)
            assert s.recv(1) == b""
            s.close()
        other = ae("OTHER").associate("127.0.0.1", node.port, ae_title=NODE_AET,
                                      bind_address=("127.0.0.2", 0))
        assert other.is_established
        assert other.send_c_echo().Status == 0
        other.release()
        # Idle associations are closed after --idle-timeout (3 s here).
        wait_for(lambda: not any(a.is_established for a in held), timeout=60,
                 what="idle associations closed")
    finally:
        for a in held:
            if a.is_established:
                a.release()
    # Their slots are free again once the node's side of each has ended.
    wait_for(lambda: store([], node.port) == [], timeout=60, what="the host let in again")


def test_c_echo_answers_listed_callers_and_dcmtk_is_refused_under_another_title(node):
    echoscu = dcmtk("echoscu")
    if echoscu is None:
        pytest.skip("dcmtk is not installed (Debian: apt-get install dcmtk)")
    ok = subprocess.run([echoscu, "-aet", "XRAYINFER", "-aec", NODE_AET, "127.0.0.1",
                         str(node.port)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([echoscu, "-aet", "EVIL", "-aec", NODE_AET, "127.0.0.1",
                          str(node.port)], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "Calling AE Title Not Recognized" in bad.stderr


def test_dcmtk_storescu_is_accepted_from_a_listed_caller(node, dest, tmp_path):
    storescu = dcmtk("storescu")
    if storescu is None:
        pytest.skip("dcmtk is not installed (Debian: apt-get install dcmtk)")
    [f] = chest_dicoms(tmp_path, 1, "DCMTK")
    bad = subprocess.run([storescu, "-aet", "EVIL", "-aec", NODE_AET, "127.0.0.1",
                          str(node.port), str(f)], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    ok = subprocess.run([storescu, "-aet", "XRAYINFER", "-aec", NODE_AET, "127.0.0.1",
                         str(node.port), str(f)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    wait_for(lambda: "DCMTK" in dest.patients("SR"), timeout=120, what="the SR of DCMTK")


# -- A refused result is retried with backoff, then quarantined; the rest go on -------------------
def test_a_result_the_destination_refuses_does_not_hold_back_the_others(node, dest, tmp_path):
    poison = dataset(tmp_path, "POISON")
    good = [dataset(tmp_path, f"GOOD-{i}") for i in range(5)]
    assert store([poison, *good], node.port) == [(0, "")] * 6
    wait_for(lambda: all(f"GOOD-{i}" in dest.patients("SR") and f"GOOD-{i}" in
                         dest.patients("OT") for i in range(5)), timeout=120, what="5 results")
    failed = node.spool / "failed"
    stem = name_for(str(poison.SOPInstanceUID))[:-len(".dcm")]
    wait_for(lambda: (failed / f"{stem}.json").exists(), timeout=60, what="the poison quarantined")
    note = json.loads((failed / f"{stem}.json").read_text())
    assert "0xC001 unknown patient" in note["reason"] and "2 times" in note["reason"]
    assert (failed / f"{stem}.dcm").exists()
    passes_later(node)  # what the worker would try again, it has tried by now
    attempts = [d for d in dest.calls if d.PatientID == "POISON"]
    assert len(attempts) == 2  # --max-refusals 2: tried twice, not every 2 s forever


# -- Acknowledged means deliverable ---------------------------------------------------------------
@pytest.mark.parametrize("missing, reason", [("StudyInstanceUID", "no StudyInstanceUID"),
                                             ("SeriesInstanceUID", "no SeriesInstanceUID"),
                                             ("PatientID", "no PatientID")])
def test_an_instance_its_results_could_not_be_filed_for_is_refused(node, tmp_path, missing,
                                                                    reason):
    before = set((node.spool / "incoming").iterdir())
    [(code, comment)] = store([dataset(tmp_path, **{missing: None})], node.port)
    assert code == 0xC000 and comment.startswith(reason)
    assert set((node.spool / "incoming").iterdir()) <= before


def test_a_result_without_type_2_attributes_is_still_delivered(node, dest, tmp_path):
    ds = dataset(tmp_path, "NO-ACCESSION", AccessionNumber=None, ReferringPhysicianName=None)
    assert store([ds], node.port) == [(0, "")]
    wait_for(lambda: "NO-ACCESSION" in dest.patients("SR"), timeout=120, what="its SR")


# -- Log lines a peer cannot write, without patient data ------------------------------------------
def test_log_lines_cannot_be_forged_and_carry_no_patient_data(node, tmp_path):
    mark = len(node.log.read_text())
    forged = dataset(tmp_path, SOPInstanceUID="1.2.3\n2026-01-01 00:00:00 INFO forged line")
    assert store([forged], node.port)[0][0] == 0xC000
    malformed = dataset(tmp_path, "MALFORMED", PatientBirthDate="2020XX01")
    assert store([malformed], node.port) == [
        (0xC000, "results cannot be built from its header (ValueError)")]
    private = dataset(tmp_path, "PRIVATE-ID", PatientName="Secret^Name")
    assert store([private], node.port) == [(0, "")]
    wait_for(lambda: f"instance {private.SOPInstanceUID}: " in node.log.read_text(),
             timeout=120, what="the instance forwarded")
    log = log_since(node, mark)
    assert "\\n2026-01-01 00:00:00 INFO forged line" in log
    assert not any(line.startswith("2026-01-01 00:00:00 INFO forged") for line in
                   log.splitlines())
    for value in ("Secret", "2020XX01", "XX", "PRIVATE-ID", "MALFORMED"):
        assert value not in log
    assert "highdicom" not in log and "pydicom" not in log


def test_metrics_and_health(node):
    base = f"http://127.0.0.1:{node.metrics_port}"
    with urllib.request.urlopen(base + "/metrics", timeout=30) as r:
        text = r.read().decode()
    assert "xray_infer_node_received_total" in text
    assert 'xray_infer_node_refused_total{reason="unknown_peer"}' in text
    with urllib.request.urlopen(base + "/healthz", timeout=30) as r:
        health = json.loads(r.read())
    assert health["spool_writable"] is True
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(base + "/other", timeout=30)


# -- Own results are known by their derived UIDs, not a name --------------------------------------
def test_own_results_are_recognised_by_uid_and_a_manufacturer_name_proves_nothing(node, dest,
                                                                                   tmp_path):
    ds = dataset(tmp_path, "NAMED", Manufacturer="xray-infer")
    assert store([ds], node.port) == [(0, "")]
    wait_for(lambda: "NAMED" in dest.patients("OT"), timeout=120, what="its results")
    [sc] = [d for d in dest.stored if d.PatientID == "NAMED" and d.Modality == "OT"]
    sc.file_meta = pydicom.dataset.FileMetaDataset()
    sc.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    a = AE(ae_title="XRAYINFER")
    a.add_requested_context(sc.SOPClassUID, pydicom.uid.ExplicitVRLittleEndian)
    assoc = a.associate("127.0.0.1", node.port, ae_title=NODE_AET)
    assert assoc.is_established
    assert assoc.send_c_store(sc).Status == 0
    assoc.release()
    wait_for(lambda: f"instance {sc.SOPInstanceUID} is a result of this model" in
             node.log.read_text(), timeout=60, what="the SC recognised")
    passes_later(node)
    assert dest.patients("OT").count("NAMED") == 1  # the SC sent back was not classified
    assert f"instance {sc.SOPInstanceUID} is a result of this model" in node.log.read_text()


def test_quarantined_files_never_carry_the_uid_text(node, tmp_path):
    poison = dataset(tmp_path, "POISON")  # the destination refuses it: quarantined
    assert store([poison], node.port) == [(0, "")]
    stem = name_for(str(poison.SOPInstanceUID))[:-len(".dcm")]
    failed = node.spool / "failed"
    wait_for(lambda: (failed / f"{stem}.json").exists(), timeout=120, what="it quarantined")
    files = list(failed.glob("*"))
    assert {f"{stem}.dcm", f"{stem}.json"} <= {f.name for f in files}
    for f in files:
        assert len(f.stem) == 40 and all(c in "0123456789abcdef" for c in f.stem)
        assert str(poison.SOPInstanceUID) not in f.name



# -- the scope gate at the node: acknowledged, nothing forwarded ----------------------------------
def test_a_knee_is_acknowledged_and_nothing_is_forwarded_for_it(node, dest, tmp_path):
    knee = dataset(tmp_path, "KNEE", BodyPartExamined="KNEE")
    chest = dataset(tmp_path, "CHEST-AFTER-KNEE", BodyPartExamined="CHEST")
    assert store([knee, chest], node.port) == [(0, "")] * 2
    wait_for(lambda: "CHEST-AFTER-KNEE" in dest.patients("SR"), timeout=120, what="chest SR")
    wait_for(lambda: f"instance {knee.SOPInstanceUID}: out of scope (BodyPartExamined); "
             f"nothing forwarded" in node.log.read_text(), timeout=60, what="the knee logged")
    assert not any(d.PatientID == "KNEE" for d in dest.calls)
    assert not any(knee.SOPInstanceUID in p.name for p in node.spooled())
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=30) as r:
        assert 'xray_infer_node_out_of_scope_total{gate="BodyPartExamined"} 1.0' in \
            r.read().decode()


def test_beyond_max_associations_every_host_is_told_to_retry_later(tmp_path):
    n = NodeProcess(tmp_path / "n", free_port(), allow=(GOOD_PEER, OTHER_PEER),
                    extra=("--max-associations", 2)).start()
    held = [ae().associate("127.0.0.1", n.port, ae_title=NODE_AET) for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        late = ae("OTHER").associate("127.0.0.1", n.port, ae_title=NODE_AET,
                                     bind_address=("127.0.0.2", 0))
        assert late.is_rejected and late.acceptor.primitive.result == 0x02  # transient
        wait_for(lambda: "127.0.0.2: association limit reached" in n.log.read_text(),
                 timeout=30, what="the rejection logged")
    finally:
        for a in held:
            a.release()
        n.stop()
