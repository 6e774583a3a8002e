"""The audit trail: DICOM audit messages (PS3.15 A.5), valid against the standard's schema,
carrying no patient data beyond it, written by the node to a file, to a UDP collector, to a
real syslog daemon (rsyslog) over TCP and to a TLS collector; and by classify for what it
stores."""
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("pynetdicom")
etree = pytest.importorskip("lxml.etree")

from dicomnet import NODE_AET, Destination, NodeProcess, dataset, store  # noqa: E402
from helpers import ROOT, free_port, run_cli, wait_for  # noqa: E402

from xray_infer import audit  # noqa: E402

SCHEMA = etree.RelaxNG(etree.parse(str(ROOT / "tests" / "schemas" /
                                       "dicom-audit-message.rng")))
RSYSLOGD = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd"
                                         if os.path.exists("/usr/sbin/rsyslogd") else None)


def messages(raw):
    """The audit messages in syslog lines (or octet-counted frames' bodies): each checked to
    be an RFC 5424 message with the ATNA MSGID, then parsed and validated."""
    out = []
    for line in raw:
        header, _, body = line.partition(b"\xef\xbb\xbf")
        assert header.startswith(b"<85>1 ") and b" IHE+RFC-3881 - " in header, header
        doc = etree.fromstring(body.strip())
        assert SCHEMA.validate(doc), (SCHEMA.error_log.last_error, body)
        out.append(doc)
    return out


def event(doc):
    ident = doc.find("EventIdentification")
    kind = ident.find("EventTypeCode")
    return (ident.find("EventID").get("csd-code"),
            kind.get("csd-code") if kind is not None else None,
            ident.get("EventOutcomeIndicator"))


def file_messages(path):
    return messages(Path(path).read_bytes().splitlines()) if Path(path).exists() else []


# Messages


def test_every_message_kind_is_valid_and_carries_only_what_the_schema_asks(tmp_path):
    ds = pydicom.Dataset()
    ds.PatientID, ds.PatientName = "AUDIT-1", "Secret^Name"
    ds.StudyInstanceUID, ds.SOPClassUID = "1.2.3", "1.2.840.10008.5.1.4.1.1.1.1"
    trail = audit.AuditTrail([str(tmp_path / "a.log")], "NODE", hostname="host")
    trail.start()
    trail.received("MODALITY", "127.0.0.1", ds)
    trail.sent(pydicom.Dataset(), [ds, ds])
    trail.sent("https://pacs/dicom-web", [ds], audit.SERIOUS_FAILURE, "quarantined")
    trail.peer_refused("10.0.0.9", "not on the allowlist (calling AE title EVIL<&>)")
    trail.peer_refused("10.0.0.9", "TLS handshake failed", certificate=True)
    trail.close()
    docs = file_messages(tmp_path / "a.log")
    assert [event(d) for d in docs] == [
        ("110100", "110120", "0"), ("110104", None, "0"), ("110104", None, "0"),
        ("110104", None, "8"), ("110114", "110122", "4"), ("110113", "110126", "4"),
        ("110100", "110121", "0")]
    text = (tmp_path / "a.log").read_text(encoding="utf-8")
    assert "Secret" not in text and "AUDIT-1" in text  # the Patient ID, never the name
    received = docs[1]
    roles = {p.find("RoleIDCode").get("csd-code"): p.get("UserID")
             for p in received.findall("ActiveParticipant")}
    assert roles == {"110153": "MODALITY", "110152": "NODE"}
    [study] = [o for o in received.findall("ParticipantObjectIdentification")
               if o.get("ParticipantObjectTypeCode") == "2"]
    assert study.get("ParticipantObjectID") == "1.2.3"
    assert study.find("SOPClass").get("NumberOfInstances") == "1"
    assert docs[2].find("ParticipantObjectIdentification/SOPClass").get(
        "NumberOfInstances") == "2"
    assert "EVIL<&>" in docs[4].find("EventIdentification/EventOutcomeDescription").text


def test_destinations_are_checked():
    assert audit.check_destination("tls://collector:6514") == "tls://collector:6514"
    for bad, says in (("tcp://collector", "no port"), ("ftp://x:1", "not udp://"),
                      ("/no/such/folder/audit.log", "does not exist")):
        with pytest.raises(ValueError, match=says):
            audit.check_destination(bad)
    p = run_cli("listen", "--port", free_port(), "--allow", "A@127.0.0.1", "--forward",
                "127.0.0.1:104:PACS", "--audit", "tcp://collector.invalid:514")
    assert p.returncode == 2 and "--audit: the host 'collector.invalid' does not resolve" \
        in p.stderr


# The node, end to end


class Collector:
    """A syslog collector in this process: UDP datagrams, or TCP/TLS octet-counted frames."""

    def __init__(self, kind, tls=None):
        self.frames, self.port, self.handshakes_failed = [], free_port(), 0
        if kind == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", self.port))
            self.sock.settimeout(0.5)
            target = self._udp
        else:
            self.sock = socket.create_server(("127.0.0.1", self.port))
            self.sock.settimeout(0.5)
            self.tls = tls
            target = self._tcp
        self.stopped = False
        threading.Thread(target=target, daemon=True).start()

    def _udp(self):
        while not self.stopped:
            try:
                self.frames.append(self.sock.recv(65536))
            except socket.timeout:
                continue
            except OSError:  # closed
                return

    def _tcp(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:  # closed
                return
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    self.handshakes_failed += 1
                    continue
            conn.settimeout(60)
            buf = b""
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                buf += data
                while b" " in buf:  # RFC 5425: LENGTH SP MESSAGE
                    length, _, rest = buf.partition(b" ")
                    if len(rest) < int(length):
                        break
                    self.frames.append(rest[:int(length)])
                    buf = rest[int(length):]

    def close(self):
        self.stopped = True
        self.sock.close()


def test_the_node_audits_start_receipt_refusal_delivery_and_stop(tmp_path):
    dest = Destination()
    udp = Collector("udp")
    log = tmp_path / "audit.log"
    node = NodeProcess(tmp_path / "node", dest.port, forward_aet=dest.aet,
                       extra=("--audit", log, "--audit", f"udp://127.0.0.1:{udp.port}"))
    node.start()
    try:
        assert store([dataset(tmp_path, "AUDITED")], node.port) == [(0, "")]
        assert store([dataset(tmp_path, "NOT-ADMITTED")], node.port, calling="STRANGER") \
            == "rejected"
        wait_for(lambda: len(dest.stored) == 2, what="the results delivered")
        wait_for(lambda: sum(event(d)[0] == "110104" for d in file_messages(log)) == 2,
                 what="receipt and delivery audited")
    finally:
        assert node.stop() == 0
    docs = file_messages(log)
    kinds = [event(d) for d in docs]
    assert kinds[0] == ("110100", "110120", "0") and kinds[-1] == ("110100", "110121", "0")
    assert ("110114", "110122", "4") in kinds
    transfers = [d for d in docs if event(d)[0] == "110104"]
    received, sent = sorted(transfers, key=lambda d: d.find("ActiveParticipant").get("UserID")
                            != "XRAYINFER")
    for doc, source, destination in ((received, "XRAYINFER", NODE_AET),
                                     (sent, NODE_AET, dest.aet)):
        roles = {p.find("RoleIDCode").get("csd-code"): p.get("UserID")
                 for p in doc.findall("ActiveParticipant")}
        assert roles == {"110153": source, "110152": destination}
        patient = [o for o in doc.findall("ParticipantObjectIdentification")
                   if o.get("ParticipantObjectTypeCode") == "1"]
        assert patient[0].get("ParticipantObjectID") == "AUDITED"
    text = log.read_text(encoding="utf-8")
    assert "NOT-ADMITTED" not in text  # a refused peer's objects are never read
    assert "Test^Child" not in text  # no patient name
    wait_for(lambda: len(udp.frames) == len(docs), what="the same messages over UDP")
    assert [event(d) for d in messages(udp.frames)] == kinds
    udp.close()


@pytest.mark.skipif(RSYSLOGD is None, reason="rsyslog is not installed (Debian: apt-get "
                    "install rsyslog; tests/system-packages.sh does it)")
def test_a_real_syslog_daemon_receives_the_nodes_audit_messages_over_tcp(tmp_path):
    port, received = free_port(), tmp_path / "received.log"
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(f'''
global(workDirectory="{tmp_path}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{port}")
template(name="body" type="string" string="%msg%\\n")
*.* action(type="omfile" file="{received}" template="body")
''')
    daemon = subprocess.Popen([RSYSLOGD, "-n", "-f", str(conf), "-i", str(tmp_path / "pid")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    dest = Destination()
    try:
        wait_for(lambda: daemon.poll() is not None or _listening(port), timeout=30,
                 what="rsyslogd listening")
        assert daemon.poll() is None, daemon.stdout.read()
        node = NodeProcess(tmp_path / "node", dest.port, forward_aet=dest.aet,
                           extra=("--audit", f"tcp://127.0.0.1:{port}")).start()
        try:
            assert store([dataset(tmp_path, "SYSLOG")], node.port) == [(0, "")]
            wait_for(lambda: len(dest.stored) == 2, what="the results delivered")
        finally:
            node.stop()
        wait_for(lambda: received.exists() and received.read_text().count("<AuditMessage>")
                 >= 4, timeout=60, what="rsyslog wrote the four messages")
        bodies = [line.split("<AuditMessage>", 1)[1] for line in
                  received.read_text(encoding="utf-8").splitlines() if "<AuditMessage>" in line]
        docs = [etree.fromstring(f"<AuditMessage>{b}".encode()) for b in bodies]
        assert all(SCHEMA.validate(d) for d in docs)
        assert [event(d)[0] for d in docs] == ["110100", "110104", "110104", "110100"]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)


def _listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_a_tls_collector_gets_the_messages_and_an_untrusted_one_gets_none(tmp_path):
    from certificates import make_ca, make_leaf
    make_ca(tmp_path, "ca")
    make_leaf(tmp_path, "collector", "ca")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "collector.pem", tmp_path / "collector.key")
    collector = Collector("tls", tls=server)
    log = tmp_path / "audit.log"
    p = run_cli("classify", ROOT / "xray_infer" / "samples", "-q", "--audit", log, "--audit",
                f"tls://127.0.0.1:{collector.port}", "--audit-tls-ca", tmp_path / "ca.pem")
    assert p.returncode == 0, p.stderr
    wait_for(lambda: len(collector.frames) == 2, what="start and stop over TLS")
    assert [event(d) for d in messages(collector.frames)] == [("110100", "110120", "0"),
                                                              ("110100", "110121", "0")]
    assert len(file_messages(log)) == 2
    collector.frames.clear()
    p = run_cli("classify", ROOT / "xray_infer" / "samples", "-q", "--audit",
                f"tls://127.0.0.1:{collector.port}")  # the system's CAs do not know this one
    assert p.returncode == 0, p.stderr  # an audit collector down or untrusted stops no run
    wait_for(lambda: collector.handshakes_failed >= 1, what="the handshake refused")
    assert collector.frames == []
    collector.close()


def test_a_collector_that_is_down_costs_one_log_line_and_never_holds_the_stop(caplog):
    import logging
    trail = audit.AuditTrail([f"tcp://127.0.0.1:{free_port()}"], "NODE")  # nothing listens
    with caplog.at_level(logging.WARNING, logger="xray_infer.audit"):
        trail.start()
        for _ in range(20):
            trail.peer_refused("10.0.0.9", "not on the allowlist")
        trail.close(timeout=30)
    lines = [r.getMessage() for r in caplog.records if "not written to" in r.getMessage()]
    assert len(lines) == 1, lines
    assert trail.failed == 22 and trail.written == 0  # start, 20 refusals, stop: all counted
