"""DICOM networking shared by the node and ``send``: TLS contexts, associating with a peer,
what counts as stored, and an association server that bounds what a peer can make it hold.

pynetdicom's own server does the TLS handshake in its accept loop (one silent client stops
every other from connecting) and reads a PDU of whatever length the peer declares into memory;
the server here does the handshake in the connection's own thread under a timeout, caps open
connections per address, and refuses PDUs longer than it negotiated.
"""
import logging
import ssl
import threading
from collections import Counter

from pynetdicom import evt
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from .policy import printable

log = logging.getLogger("xray_infer.node")

#: C-STORE statuses (PS3.4 B.2.3; Annex C for the warnings).
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
#: A PDU longer than this is refused whatever the peer declares (an A-ASSOCIATE-RQ with many
#: contexts is the largest legitimate one; P-DATA PDUs are bounded by the negotiated length).
MAX_PDU_BYTES = 1 << 20


def is_stored(status):
    """Whether a C-STORE response status means the object was stored: success, or a warning
    (0xB000 coercion, 0xB006 elements discarded, 0xB007 data set does not match the SOP class;
    PS3.4 B.2.3)."""
    return status is not None and (status == SUCCESS or status in (0xB000, 0xB006, 0xB007))


def response_status(ds):
    return int(ds.Status) if ds is not None and "Status" in ds else None


def tls_context(cert, key, ca, server):
    """Mutual TLS (PS3.15 Annex B): our certificate and key, and a peer's certificate must be
    signed by ``ca``. A client does not check the peer's host name against its certificate
    (DICOM peers are configured by address; the CA is the trust anchor)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    if not server:
        ctx.check_hostname = False
    return ctx


class AssociationError(Exception):
    """The peer refused or dropped the association; names the peer and the reason."""


_REJECT_REASONS = {(1, 3): "calling AE title not recognised", (1, 7): "called AE title not "
                   "recognised", (3, 2): "local limit exceeded (too many associations)",
                   (3, 1): "temporary congestion"}


def associate(ae, peer, tls=None):
    """An established association with ``peer`` (a Peer), or AssociationError saying why."""
    kwargs = {"tls_args": (tls, peer.host)} if tls is not None else {}
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, **kwargs)
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        reason = _REJECT_REASONS.get((rj.result_source, rj.diagnostic), "no reason given") \
            if rj is not None else "no reason given"
        raise AssociationError(f"{peer} rejected the association: {reason} (this end calls "
                               f"itself {ae.ae_title} and called {peer.ae_title})")
    if assoc.is_aborted and assoc.rejected_contexts and not assoc.accepted_contexts:
        kinds = sorted({cx.abstract_syntax.name for cx in assoc.rejected_contexts})
        raise AssociationError(f"{peer} accepts none of what was offered: {', '.join(kinds)}")
    raise AssociationError(f"no association with {peer} (not running, not reachable, or it "
                           f"refused the connection or the TLS handshake)")


class _BoundedSocket(AssociationSocket):
    # pynetdicom's DUL reads each PDU as recv(6) for the header, then recv(length): a length
    # over the bound is a closed transport (Evt17) instead of memory the peer chose.
    def recv(self, nr_bytes):
        if nr_bytes > MAX_PDU_BYTES:
            log.warning("association from %s closed: a PDU of %d bytes declared (limit %d)",
                        self.assoc.requestor.address, nr_bytes, MAX_PDU_BYTES)
            raise OSError("PDU too long")
        return super().recv(nr_bytes)


class _Handler(RequestHandler):
    def setup(self):
        self.refused = False
        server = self.server
        self.request.settimeout(server.handshake_timeout)
        if server.tls is not None:
            try:
                self.request = server.tls.wrap_socket(self.request, server_side=True)
            except (OSError, ssl.SSLError) as e:
                log.warning("connection from %s refused: TLS handshake failed (%s)",
                            self.client_address[0], printable(getattr(e, "reason", None) or e))
                self.refused = True

    def handle(self):
        # As RequestHandler.handle, then wait for the association to end: the connection holds
        # its slot in the per-address count until then.
        if self.refused:
            return
        assoc = self._create_association()
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        assoc.join()

    def _create_association(self):
        assoc = super()._create_association()
        assoc.dul.socket.__class__ = _BoundedSocket  # same object, bounded recv (see above)
        return assoc


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TLS per connection, a per-address connection cap and a
    bound on PDU length. Build it with ``ae.make_server(..., server_class=GuardedServer,
    request_handler=_Handler, tls=..., max_per_peer=..., handshake_timeout=...)``."""

    daemon_threads = True

    def __init__(self, *args, tls=None, max_per_peer=4, handshake_timeout=10.0, **kwargs):
        self.tls, self.max_per_peer = tls, max_per_peer
        self.handshake_timeout = handshake_timeout
        self._open, self._hosts, self._lock = Counter(), {}, threading.Lock()
        kwargs.setdefault("request_handler", _Handler)
        super().__init__(*args, **kwargs)

    def verify_request(self, request, client_address):
        host = client_address[0]
        with self._lock:
            if self._open[host] >= self.max_per_peer:
                log.warning("connection from %s refused: %d connections from it already open "
                            "(limit %d)", host, self._open[host], self.max_per_peer)
                return False
            self._open[host] += 1
            self._hosts[request] = host
        return True

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:  # however the connection ended (pynetdicom does not always close it here)
            with self._lock:
                host = self._hosts.pop(request, None)
                if host is not None:
                    self._open[host] -= 1
                    if self._open[host] <= 0:
                        del self._open[host]
            self.shutdown_request(request)

    def handle_error(self, request, client_address):
        log.warning("connection from %s ended with an error", client_address[0], exc_info=True)
