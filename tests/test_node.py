"""The DICOM node against a real PACS: Orthanc, started here on loopback ports."""
import io
import signal
import threading

import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("pynetdicom")

from dicomnet import NODE_AET, NodeProcess, chest_dicoms, send, wait_for  # noqa: E402
from orthanc import BINARY, Orthanc, free_port  # noqa: E402

from xray_infer import classify  # noqa: E402

pytestmark = pytest.mark.skipif(BINARY is None, reason="Orthanc is not installed (Debian: "
                                "apt-get install orthanc; tests/system-packages.sh does it)")


def sr_finding(orthanc, instance_id):
    """(finding meaning, referenced source SOP instance UID) of an SR stored in Orthanc."""
    sr = pydicom.dcmread(io.BytesIO(orthanc.file(instance_id)))
    finding, source = None, None

    def walk(items):
        nonlocal finding, source
        for it in items:
            name = it.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in it \
                else ""
            if name == "Finding" and "ConceptCodeSequence" in it:
                finding = it.ConceptCodeSequence[0].CodeMeaning
            if "ReferencedSOPSequence" in it:
                source = it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            if "ContentSequence" in it:
                walk(it.ContentSequence)
    walk(sr.ContentSequence)
    return finding, source


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    node_port = free_port()
    folder = tmp_path_factory.mktemp("orthanc")
    orthanc = Orthanc(folder, modalities={"xrayinfer": [NODE_AET, "127.0.0.1", node_port]})
    orthanc.start()
    orthanc.node_port = node_port
    yield orthanc
    orthanc.stop()


@pytest.fixture()
def node(pacs, tmp_path):
    n = NodeProcess(tmp_path, pacs.dicom_port, port=pacs.node_port).start()
    yield n
    n.stop()


def test_send_to_orthanc_and_a_refused_association(pacs, tmp_path):
    files = chest_dicoms(tmp_path / "in", 2, "SEND-1")
    p = send(files, pacs.dicom_port, "ORTHANC")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("stored (0x0000)") == 2
    assert len(pacs.post("/tools/find", {"Level": "Instance",
                                         "Query": {"PatientID": "SEND-1"}})) == 2
    p = send(files, pacs.dicom_port, "WRONG")
    assert p.returncode == 1 and "rejected the association" in p.stderr
    assert "called AE title not recognised" in p.stderr


def test_pacs_to_node_to_pacs(pacs, node, tmp_path):
    """Upload to Orthanc, have Orthanc C-STORE to the node, and find in each study an SR whose
    finding is what `xray-infer classify` says of the same file, and its Secondary Capture."""
    files = chest_dicoms(tmp_path / "in", 3, "E2E-1")
    ids = [pacs.upload(f) for f in files]
    pacs.post("/modalities/xrayinfer/store", {"Resources": ids, "Synchronous": True})
    wait_for(lambda: len(pacs.find_instances("SR", PatientID="E2E-1")) == 3, what="3 SRs")
    wait_for(lambda: len(pacs.find_instances("OT", PatientID="E2E-1")) == 3, what="3 SCs")
    expected = {pydicom.dcmread(f).SOPInstanceUID: r.label
                for f, r in zip(files, classify([str(f) for f in files]))}
    from xray_infer.dicom_results import FINDINGS
    got = dict(reversed(sr_finding(pacs, i)) for i in pacs.find_instances("SR", PatientID="E2E-1"))
    assert got == {uid: FINDINGS[label].meaning for uid, label in expected.items()}
    wait_for(lambda: not node.spooled(), what="empty spool")


def test_unclassifiable_objects_get_a_status_and_the_node_stays_up(pacs, node, tmp_path):
    from pydicom.data import get_testdata_file
    sr = get_testdata_file("test-SR.dcm")
    multiframe = get_testdata_file("SC_rgb_rle_2frame.dcm")  # Secondary Capture, 2 frames
    p = send([sr, multiframe], node.port, NODE_AET)
    assert p.returncode == 1
    # An SR is not offered in negotiation: refused before any of it is sent.
    assert "test-SR.dcm: not sent: No presentation context for 'Comprehensive SR" in p.stdout
    assert p.stdout.count("refused with status 0xC000") == 1, p.stdout
    # the peer hears a fixed text (never a value from its object); the log says what it was
    assert "pixel data cannot be decoded safely" in p.stdout and "multi-frame" not in p.stdout
    good = chest_dicoms(tmp_path / "in", 1, "STAYS-UP")
    assert send(good, node.port, NODE_AET).returncode == 0
    wait_for(lambda: len(pacs.find_instances("SR", PatientID="STAYS-UP")) == 1, what="1 SR")
    wait_for(lambda: "stored by" in node.log.read_text(), what="the forward logged")
    assert "refused (0xC000): pixel data cannot be decoded safely (multi-frame" in \
        node.log.read_text()


@pytest.mark.slow
def test_load_200_instances_over_4_associations(pacs, node, tmp_path):
    files = chest_dicoms(tmp_path / "in", 200, "LOAD-1")
    results = [None] * 4
    threads = [threading.Thread(target=lambda k: results.__setitem__(
        k, send(files[k::4], node.port, NODE_AET)), args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    wait_for(lambda: len(pacs.find_instances("SR", PatientID="LOAD-1")) >= 200, timeout=600,
             what="200 SRs")
    srs = pacs.find_instances("SR", PatientID="LOAD-1")
    sources = [sr_finding(pacs, i)[1] for i in srs]
    assert len(srs) == 200 and len(set(sources)) == 200
    assert set(sources) == {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert len(pacs.find_instances("OT", PatientID="LOAD-1")) == 200


@pytest.mark.slow
def test_killed_mid_batch_then_restarted_delivers_each_result_once(pacs, tmp_path):
    node = NodeProcess(tmp_path, pacs.dicom_port, port=pacs.node_port).start()
    files = chest_dicoms(tmp_path / "in", 24, "KILL-1")
    assert send(files, node.port, NODE_AET).returncode == 0  # all spooled and acknowledged
    wait_for(lambda: len(pacs.find_instances("SR", PatientID="KILL-1")) >= 1, what="first SR")
    node.stop(signal.SIGKILL)  # mid-way: some delivered, some not
    left = len(node.spooled())
    assert left > 0, "the node finished before it was killed; nothing tested"
    node = NodeProcess(tmp_path, pacs.dicom_port, port=pacs.node_port).start()
    try:
        wait_for(lambda: not node.spooled(), what="spool emptied after the restart")
        srs = pacs.find_instances("SR", PatientID="KILL-1")
        sources = [sr_finding(pacs, i)[1] for i in srs]
        assert len(srs) == 24 and len(set(sources)) == 24
        assert len(pacs.find_instances("OT", PatientID="KILL-1")) == 24
    finally:
        node.stop()


def test_results_wait_in_the_spool_while_the_destination_is_down(tmp_path):
    dest_port = free_port()
    node = NodeProcess(tmp_path / "node", dest_port).start()
    orthanc = Orthanc(tmp_path / "later", dicom_port=dest_port)
    try:
        files = chest_dicoms(tmp_path / "in", 3, "DOWN-1")
        assert send(files, node.port, NODE_AET).returncode == 0
        wait_for(lambda: "3 instance(s) wait in the spool" in node.log.read_text(),
                 what="all three classified and held")
        assert len(node.spooled()) == 3  # classified, not delivered: kept
        orthanc.start()
        wait_for(lambda: not node.spooled(), what="spool emptied")
        assert len(orthanc.find_instances("SR", PatientID="DOWN-1")) == 3
    finally:
        assert node.stop() == 0  # SIGTERM: a clean stop
        orthanc.stop()
    assert "stopped" in node.log.read_text()


def _readme_line(command):
    """The README's own ``xray-infer COMMAND`` example, as arguments (comment cut)."""
    from helpers import ROOT
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith(f"xray-infer {command} "):
            return line.split("#")[0].split()[1:]
    raise AssertionError(f"no xray-infer {command} line in the README")


def test_the_readmes_node_and_send_lines_work_as_written(tmp_path):
    import subprocess
    import sys
    orthanc = Orthanc(tmp_path / "pacs")  # the README's PACS: an Orthanc, AE title ORTHANC
    orthanc.start()
    node_port = free_port()
    ports = {"11112": str(node_port), "4242": str(orthanc.dicom_port)}  # free ones, here

    def here(args):
        for fixed, free in ports.items():
            args = [a.replace(fixed, free) for a in args]
        return [sys.executable, "-m", "xray_infer", *args]
    chest_dicoms(tmp_path / "scans", 2, "README-1")
    log = open(tmp_path / "node.log", "ab")
    node = subprocess.Popen(here(_readme_line("listen")), cwd=tmp_path, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: node.poll() is not None
                 or "listening as" in (tmp_path / "node.log").read_text(), what="the node")
        assert node.poll() is None, (tmp_path / "node.log").read_text()
        p = subprocess.run(here(_readme_line("send")), cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        wait_for(lambda: len(orthanc.find_instances("SR", PatientID="README-1")) == 2,
                 what="2 SRs at the PACS")
        wait_for(lambda: len(orthanc.find_instances("OT", PatientID="README-1")) == 2,
                 what="2 SCs at the PACS")
        assert "Traceback" not in (tmp_path / "node.log").read_text()
    finally:
        node.terminate()
        node.wait(60)
        log.close()
        orthanc.stop()


def test_a_destination_that_does_not_resolve_is_refused_at_start_and_later_in_one_line(
        tmp_path):
    from helpers import run_cli
    from xray_infer.node.network import AssociationError, associate
    from xray_infer.peer import Peer
    from pynetdicom import AE
    p = run_cli("listen", "--port", free_port(), "--allow", "SCANNER@127.0.0.1", "--forward",
                "pacs.invalid:104:PACS", "--spool", tmp_path / "spool")
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "does not resolve" in p.stderr
    assert "pacs.invalid" in p.stderr
    # a name that stops resolving after the start: an AssociationError (one log line), never a
    # socket.gaierror traceback from the forwarding worker
    with pytest.raises(AssociationError, match="no association with .*pacs.invalid"):
        associate(AE(ae_title="XRAYINFER"), Peer.parse("pacs.invalid:104:PACS"))


def test_listen_and_send_help_name_every_default():
    from helpers import run_cli
    listen = run_cli("listen", "--help").stdout
    for text in ("(default XRAYINFER)", "xray-infer-spool in the current folder",
                 "the DICOM port to listen on", "the bundled model"):
        assert text in " ".join(listen.split()), text
    send_help = " ".join(run_cli("send", "--help").stdout.split())
    assert "(default XRAYINFER)" in send_help and "(default ANY-SCP)" in send_help
    for command, groups in (("listen", ("network:", "callers:", "limits", "DICOM TLS:",
                                        "audit trail")),
                            ("classify", ("inputs:", "rows (output):", "scoring:",
                                          "side outputs:", "DICOMweb:", "scope gate:"))):
        text = run_cli(command, "--help").stdout
        assert all(f"\n{g}" in text for g in groups), (command, text)
        assert "(default on)" in " ".join(text.split())
