"""The audit trail, as IHE ATNA's Record Audit Event has it: DICOM audit messages (PS3.15 A.5)
for the events hospital security staff ask about, each an RFC 5424 syslog message, written to
a file (one a line) or sent to a syslog collector over UDP (RFC 5426), TCP or TLS (RFC 5425,
octet-counted frames).

- Application Activity (110100): start and stop.
- DICOM Instances Transferred (110104): each instance received, each result delivered (and a
  result given up on, quarantined, with a serious-failure outcome).
- User Authentication (110114): a peer refused (not on the allowlist, or calling another AE
  title); Security Alert (110113): a TLS handshake or a client certificate refused.

A message carries what its schema asks for and nothing more of the patient: the Patient ID
(the Patient participant object is mandatory in 110104), never a name or birth date; the
study by its UID with the SOP classes and counts. Messages wait in a bounded queue and one
thread writes them, so a slow or absent collector never holds the node; a full queue drops the
newest and counts them. A collector that cannot be reached is tried again, with backoff.
"""
import logging
import os
import queue
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

log = logging.getLogger("xray_infer.audit")

#: syslog facility 10 (security/authorization), severity 5 (notice), as ATNA recommends.
PRIORITY = 10 * 8 + 5
MSGID = "IHE+RFC-3881"
#: Messages waiting to be written; past it the newest are dropped, and counted.
QUEUE_SIZE = 10_000
#: Seconds a connection to a collector may take, and between tries of one that failed.
CONNECT_TIMEOUT, RETRY_SECONDS = 10.0, 5.0
SCHEMES = ("udp", "tcp", "tls")

# (code, coding scheme, meaning) of the DCM codes used (PS3.16)
APPLICATION_ACTIVITY = ("110100", "DCM", "Application Activity")
INSTANCES_TRANSFERRED = ("110104", "DCM", "DICOM Instances Transferred")
SECURITY_ALERT = ("110113", "DCM", "Security Alert")
USER_AUTHENTICATION = ("110114", "DCM", "User Authentication")
APPLICATION_START = ("110120", "DCM", "Application Start")
APPLICATION_STOP = ("110121", "DCM", "Application Stop")
LOGIN = ("110122", "DCM", "Login")
NODE_AUTHENTICATION = ("110126", "DCM", "Node Authentication")
APPLICATION = ("110150", "DCM", "Application")
DESTINATION = ("110152", "DCM", "Destination Role ID")
SOURCE = ("110153", "DCM", "Source Role ID")
STUDY_UID = ("110180", "DCM", "Study Instance UID")
NODE_ID = ("110182", "DCM", "Node ID")
PATIENT_NUMBER = ("2", "RFC-3881", "Patient Number")
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = "0", "4", "8"


def check_destination(text):
    """``text`` as a destination (a file path, or ``udp://``, ``tcp://``, ``tls://`` HOST:PORT),
    or ValueError saying what is wrong with it."""
    if "://" not in text:
        folder = os.path.dirname(os.path.abspath(text))
        if not os.path.isdir(folder):
            raise ValueError(f"{text}: the folder {folder} does not exist")
        return text
    parts = urlsplit(text)
    if parts.scheme not in SCHEMES or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"{text}: not udp://, tcp:// or tls://HOST:PORT, nor a file path")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not port:
        raise ValueError(f"{text}: no port (syslog listens on 514, over TLS on 6514)")
    return text


def _code(parent, tag, coded):
    code, scheme, meaning = coded
    return ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": scheme,
                                       "originalText": meaning})


@dataclass(frozen=True)
class Participant:
    """An ActiveParticipant: ``user`` (an AE title or a process), ``address`` (a host name or
    IP address, its network access point), whether it started the event, and its role."""
    user: str
    address: str = ""
    requestor: bool = False
    role: tuple = None

    def element(self, message):
        attrs = {"UserID": self.user or "unknown",
                 "UserIsRequestor": "true" if self.requestor else "false"}
        if self.address:
            attrs["NetworkAccessPointID"] = self.address
            attrs["NetworkAccessPointTypeCode"] = "2" if _is_ip(self.address) else "1"
        item = ET.SubElement(message, "ActiveParticipant", attrs)
        if self.role:
            _code(item, "RoleIDCode", self.role)


def _is_ip(text):
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
        return True
    except OSError:
        return False


def message(event, outcome, participants, source_id, *, event_type=None, action=None,
            objects=(), description=None, now=None):
    """One audit message (PS3.15 A.5.1) as XML text."""
    root = ET.Element("AuditMessage")
    attrs = {"EventDateTime": (now or datetime.now(timezone.utc)).isoformat(
        timespec="milliseconds").replace("+00:00", "Z"), "EventOutcomeIndicator": outcome}
    if action:
        attrs["EventActionCode"] = action
    ident = ET.SubElement(root, "EventIdentification", attrs)
    _code(ident, "EventID", event)
    if event_type:
        _code(ident, "EventTypeCode", event_type)
    if description:
        ET.SubElement(ident, "EventOutcomeDescription").text = description
    for p in participants:
        p.element(root)
    ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source_id})
    for make in objects:
        make(root)
    return ET.tostring(root, encoding="unicode")


def participant_object(object_id, type_code, role, id_type, sop_classes=None):
    """A ParticipantObjectIdentification for ``message``: ``type_code`` 1 a person, 2 a system
    object; ``role`` 1 patient, 3 report, 13 security resource; ``sop_classes`` (a study's):
    ``{SOP class UID: how many of its instances}``."""
    def make(root):
        item = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": object_id or "unknown", "ParticipantObjectTypeCode": type_code,
            "ParticipantObjectTypeCodeRole": role})
        _code(item, "ParticipantObjectIDTypeCode", id_type)
        for uid, count in (sop_classes or {}).items():
            ET.SubElement(item, "SOPClass", {"UID": uid, "NumberOfInstances": str(count)})
    return make


def syslog_line(xml, hostname, app="xray-infer", now=None):
    """An RFC 5424 message carrying ``xml`` (UTF-8, after a byte order mark, as the RFC asks
    for a UTF-8 body), as bytes without framing."""
    stamp = (now or datetime.now(timezone.utc)).isoformat(timespec="microseconds") \
        .replace("+00:00", "Z")
    header = f"<{PRIORITY}>1 {stamp} {hostname or '-'} {app} {os.getpid()} {MSGID} - "
    return header.encode("ascii", "replace") + b"\xef\xbb\xbf" + xml.encode("utf-8")


class _Sink:
    """Where messages go: ``write(frame_bytes)``, raising OSError when they cannot."""

    def __init__(self, destination, tls=None):
        self.destination, self.tls = destination, tls
        self.kind = urlsplit(destination).scheme if "://" in destination else "file"
        self.sock, self.file, self.next_try = None, None, 0.0
        self.failing = False  # the last write failed (logged once until one succeeds)

    def write(self, data):
        if self.kind == "file":
            if self.file is None:
                self.file = open(self.destination, "ab")
            self.file.write(data + b"\n")
            self.file.flush()
            return
        parts = urlsplit(self.destination)
        if self.kind == "udp":
            if self.sock is None:
                self.sock = socket.socket(socket.AF_INET6 if ":" in parts.hostname
                                          else socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.sendto(data, (parts.hostname, parts.port))
            return
        if self.sock is None:
            if time.monotonic() < self.next_try:
                raise OSError("the collector could not be reached a moment ago")
            try:
                sock = socket.create_connection((parts.hostname, parts.port), CONNECT_TIMEOUT)
                if self.kind == "tls":
                    sock = self.tls.wrap_socket(sock, server_hostname=parts.hostname)
                sock.settimeout(CONNECT_TIMEOUT)
                self.sock = sock
            except (OSError, ssl.SSLError):
                self.next_try = time.monotonic() + RETRY_SECONDS
                raise
        try:  # RFC 5425 / 6587 octet counting: the length, a space, the message
            self.sock.sendall(str(len(data)).encode() + b" " + data)
        except OSError:
            self.close()
            raise

    def close(self):
        for thing in (self.sock, self.file):
            if thing is not None:
                try:
                    thing.close()
                except OSError:
                    pass
        self.sock = self.file = None


def tls_context(ca=None, cert=None, key=None):
    """The client TLS context for tls:// collectors: verified against ``ca`` (else the
    system's CAs), with a client certificate where given."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


class AuditTrail:
    """Audit messages of one process, ``user`` (an AE title, or the command) on this host, to
    every destination in ``destinations`` (none: nothing is written). The audit source is
    named ``user@host``."""

    def __init__(self, destinations, user, tls=None, hostname=None):
        self.user, self.hostname = user, hostname or socket.gethostname()
        self.source_id = f"{user}@{self.hostname}"
        self.sinks = [_Sink(d, tls) for d in destinations]
        self.queue = queue.Queue(QUEUE_SIZE)
        self.dropped = self.written = self.failed = 0
        self._thread = None
        self._lock = threading.Lock()

    @property
    def me(self):
        return Participant(self.user, self.hostname, False, APPLICATION)

    def start(self):
        if self.sinks and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="xray-audit", daemon=True)
            self._thread.start()
        self.application(started=True)

    def close(self, timeout=10.0):
        """The stop message, then what waits is written (for ``timeout`` seconds at most)."""
        self.application(started=False)
        if self._thread is not None:
            try:  # a full queue behind a stuck collector must not hold the stop
                self.queue.put(None, timeout=timeout)
            except queue.Full:
                pass
            self._thread.join(timeout)
        for sink in self.sinks:
            sink.close()
        if self.dropped:
            log.warning("audit: %d message(s) dropped, the queue being full", self.dropped)

    def _emit(self, xml):
        if not self.sinks:
            return
        try:
            self.queue.put_nowait(syslog_line(xml, self.hostname))
        except queue.Full:
            with self._lock:
                self.dropped += 1

    def _run(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            for sink in self.sinks:
                try:
                    sink.write(item)
                    self.written += 1
                    if sink.failing:
                        sink.failing = False
                        log.warning("audit: %s takes messages again", sink.destination)
                except (OSError, ssl.SSLError) as e:
                    self.failed += 1
                    if not sink.failing:  # one line an outage, not one a message
                        sink.failing = True
                        log.warning("audit: not written to %s: %s (counted until it takes "
                                    "messages again)", sink.destination,
                                    getattr(e, "strerror", None) or type(e).__name__)

    # -- the events ----------------------------------------------------------------------------
    def application(self, started):
        self._emit(message(APPLICATION_ACTIVITY, SUCCESS, [self.me], self.source_id,
                           event_type=APPLICATION_START if started else APPLICATION_STOP))

    def received(self, peer_ae, peer_address, ds):
        """An instance received and kept (spooled)."""
        self._emit(self._transfer(Participant(peer_ae, peer_address, True, SOURCE),
                                  Participant(self.user, self.hostname, False, DESTINATION),
                                  [ds], SUCCESS))

    def sent(self, destination, datasets, outcome=SUCCESS, description=None):
        """Results sent to ``destination`` (a Peer, or a DICOMweb URL): delivered, or given
        up on (``SERIOUS_FAILURE``, with why)."""
        host = getattr(destination, "host", None) or urlsplit(str(destination)).hostname or ""
        user = getattr(destination, "ae_title", None) or str(destination)
        self._emit(self._transfer(Participant(self.user, self.hostname, True, SOURCE),
                                  Participant(user, host, False, DESTINATION), datasets,
                                  outcome, description))

    def peer_refused(self, address, why, certificate=False):
        """A peer refused: User Authentication for who it said it is (not on the allowlist,
        another AE title called), Security Alert (``certificate``) for its TLS handshake or
        certificate. ``why``: this program's own words."""
        event, kind = (SECURITY_ALERT, NODE_AUTHENTICATION) if certificate \
            else (USER_AUTHENTICATION, LOGIN)
        objects = [participant_object(address, "2", "13", NODE_ID)] if certificate else []
        self._emit(message(event, MINOR_FAILURE, [Participant(address, address, True), self.me],
                           self.source_id, event_type=kind, action="E", objects=objects,
                           description=why))

    def _transfer(self, source, destination, datasets, outcome, description=None):
        first = datasets[0]
        classes = {}
        for ds in datasets:
            uid = str(ds.get("SOPClassUID", ""))
            classes[uid] = classes.get(uid, 0) + 1
        return message(INSTANCES_TRANSFERRED, outcome, [source, destination], self.source_id,
                       action="C", description=description,
                       objects=[participant_object(str(first.get("StudyInstanceUID", "")), "2",
                                                   "3", STUDY_UID, classes),
                                participant_object(str(first.get("PatientID", "") or ""), "1",
                                                   "1", PATIENT_NUMBER)])
