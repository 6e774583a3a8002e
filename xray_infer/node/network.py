"""DICOM networking shared by the node and ``send``: TLS contexts, associating with a peer,
what counts as stored, and an association server that bounds what a peer can make it hold.

pynetdicom's own server does the TLS handshake in its accept loop (one silent client stops
every other from connecting), times out only between bytes, and reads a PDU of whatever length
the peer declares into memory; the server here does the handshake in the connection's own
thread, holds every connection to a deadline, caps connections that have not associated apart
from those that have, and refuses PDUs longer than it negotiated.
"""
import logging
import socket
import ssl
import threading
import time
from pathlib import Path

from pynetdicom import evt
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from .refusals import Refusal
from ..errors import XrayInferError

log = logging.getLogger("xray_infer.node")



def is_stored(status):
    """Whether a C-STORE response status means the object was stored: success, or a warning
    (0xB000 coercion, 0xB006 elements discarded, 0xB007 data set does not match the SOP class;
    PS3.4 B.2.3)."""
    return status is not None and (status == 0x0000 or status in (0xB000, 0xB006, 0xB007))


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


class AssociationError(XrayInferError):
    """The peer refused or dropped the association; names the peer and the reason."""


_REJECT_REASONS = {(1, 3): "calling AE title not recognised", (1, 7): "called AE title not "
                   "recognised", (3, 2): "local limit exceeded (too many associations)",
                   (3, 1): "temporary congestion"}


def associate(ae, peer, tls=None):
    """An established association with ``peer`` (a Peer), or AssociationError saying why."""
    kwargs = {"tls_args": (tls, peer.host)} if tls is not None else {}
    try:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, **kwargs)
    except OSError as e:  # a name that stopped resolving, a network that is down: one line
        raise AssociationError(f"no association with {peer}: "
                               f"{e.strerror or type(e).__name__}") from None
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
    max_pdu = 1 << 20  # set per connection from Limits.max_pdu_bytes

    def recv(self, nr_bytes):
        if nr_bytes > self.max_pdu:
            log.warning("association from %s closed: a PDU of %d bytes declared (limit %d)",
                        self.assoc.requestor.address, nr_bytes, self.max_pdu)
            raise OSError("PDU too long")
        return super().recv(nr_bytes)


def _client_leaf_problem(der):
    """Why a client certificate (DER) is not a leaf usable for client authentication, or
    None: a CA certificate (CA:TRUE) is refused as a client, as is one whose key usage or
    extended key usage excludes it."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID
    cert = x509.load_der_x509_certificate(der)
    ext = cert.extensions
    try:
        if ext.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "a CA certificate (CA:TRUE), not a client's"
    except x509.ExtensionNotFound:
        pass
    try:
        if not ext.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            return "key usage without digitalSignature"
    except x509.ExtensionNotFound:
        pass
    try:
        if ExtendedKeyUsageOID.CLIENT_AUTH not in \
                ext.get_extension_for_class(x509.ExtendedKeyUsage).value:
            return "extended key usage without clientAuth"
    except x509.ExtensionNotFound:
        pass
    return None


#: Seconds after which a connection that has not associated counts as silent: a listed
#: address at its connection cap sees its oldest silent connection closed for a new one.
SILENT_AFTER = 1.0


class ClientCertificates:
    """What a client's certificate must be beyond a chain the CA file validates: a leaf for
    client authentication (``_client_leaf_problem``); with ``direct``, issued by one of the
    CAs of the CA file itself (no intermediate, even a CA:TRUE certificate that CA issued);
    with ``pins``, one of these certificates (SHA-256 of the DER, hex)."""

    def __init__(self, ca_file=None, direct=True, pins=()):
        from cryptography import x509
        self.issuers = x509.load_pem_x509_certificates(Path(ca_file).read_bytes()) \
            if direct and ca_file else []
        self.pins = frozenset(p.lower().replace(":", "") for p in pins)

    def problem(self, der):
        """Why the client certificate ``der`` is refused, or None."""
        import hashlib

        from cryptography import x509
        from cryptography.exceptions import InvalidSignature
        why = _client_leaf_problem(der)
        if why:
            return why
        if self.pins and hashlib.sha256(der).hexdigest() not in self.pins:
            return "not one of the pinned client certificates"
        if self.issuers:
            leaf = x509.load_der_x509_certificate(der)
            for ca in self.issuers:
                try:
                    leaf.verify_directly_issued_by(ca)
                    return None
                except (InvalidSignature, ValueError, TypeError):  # another issuer
                    continue
            return "not issued directly by a CA of --tls-ca (an intermediate is not accepted)"
        return None


class Connection:
    """One accepted connection: its address, socket and the deadline by which it must have
    associated (``pending``) or, once associated, completed its next message. Past it, the
    reaper shuts the socket down and counts ``reason``."""

    def __init__(self, host, sock, deadline):
        self.host, self.sock, self.deadline = host, sock, deadline
        self.pending, self.requested, self.expired, self.listed = True, False, False, False
        self.closed = False  # its socket is closed; its thread may still be winding down
        self.reason = Refusal.SETUP_DEADLINE

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed
            pass


class _Handler(RequestHandler):
    def setup(self):
        server = self.server
        self.conn = server.connection(self.request)
        self.refused = False
        # a timeout between bytes; the deadline for the whole set-up is the reaper's
        self.request.settimeout(server.limits.setup_timeout)
        if server.tls is None:
            return
        try:
            self.request = server.tls.wrap_socket(self.request, server_side=True)
            self.conn.sock = self.request
            why = server.clients.problem(self.request.getpeercert(binary_form=True))
        except (OSError, ssl.SSLError, ValueError) as e:
            why = f"handshake failed: {getattr(e, 'reason', None) or e}"
        if why:
            server.refusals.add(self.client_address[0], Refusal.TLS, why)
            self.conn.requested = self.refused = True

    def handle(self):
        # As RequestHandler.handle, then wait for the association to end: the connection holds
        # its slot until then.
        if self.refused:
            return
        assoc = self._create_association()
        assoc.xray_conn = self.conn
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        assoc.join()

    def _create_association(self):
        assoc = super()._create_association()
        assoc.dul.socket.__class__ = _BoundedSocket  # same object, bounded recv (see above)
        assoc.dul.socket.max_pdu = self.server.limits.max_pdu_bytes
        return assoc


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TLS per connection under a deadline, caps on
    connections, and a bound on PDU length. Build it with ``ae.make_server(...,
    server_class=GuardedServer, limits=..., refusals=..., tls=...)``.

    Connections that have not associated yet (``pending``) from addresses no listed caller uses
    are capped per address and in total, apart from association slots and from the connections
    of listed addresses, so unknown addresses cannot hold a listed peer's place; each must
    associate (TLS handshake and A-ASSOCIATE-RQ together) within
    ``limits.setup_timeout`` seconds, and an association must complete a message within
    ``limits.network_timeout`` of its last: deadlines, not timeouts between bytes, so a peer
    trickling a byte at a time is cut off all the same. One reaper thread enforces them."""

    daemon_threads = True

    def __init__(self, *args, limits, refusals, allow, tls=None, clients=None, **kwargs):
        self.tls, self.limits, self.refusals, self.allow = tls, limits, refusals, allow
        self.clients = clients or ClientCertificates()
        self._conns, self._lock = {}, threading.Lock()
        self._closing = threading.Event()
        kwargs.setdefault("request_handler", _Handler)
        super().__init__(*args, **kwargs)
        threading.Thread(target=self._reap, name="xray-node-deadlines", daemon=True).start()

    def connection(self, request):
        with self._lock:
            return self._conns.get(request)

    def verify_request(self, request, client_address):
        host = client_address[0]
        listed = self.allow.knows(host)
        evicted = []
        with self._lock:
            mine = [c for c in self._conns.values()
                    if c.host == host and not (c.expired or c.closed)]
            unknown = [c for c in self._conns.values() if c.pending and not c.listed]
            if listed and len(mine) >= self.limits.max_per_peer:
                # silent connections never lock a listed address out: at its cap, the oldest
                # of its connections still not associated a second after opening (a peer that
                # means to associate does so in milliseconds) makes way for the newest
                opened_before = time.monotonic() + self.limits.setup_timeout - SILENT_AFTER
                silent = sorted((c for c in mine if c.pending and c.deadline <= opened_before),
                                key=lambda c: c.deadline)
                while silent and len(mine) >= self.limits.max_per_peer:  # a closing one may
                    oldest = silent.pop(0)                                # still be counted
                    oldest.expired = True
                    evicted.append(oldest)
                    mine.remove(oldest)
            if len(mine) >= self.limits.max_per_peer:
                refusal = Refusal.PER_PEER
            elif not listed and (sum(c.pending for c in mine) >= self.limits.max_pending_per_peer
                                 or len(unknown) >= self.limits.max_pending):
                refusal = Refusal.PENDING
            else:
                conn = Connection(host, request, time.monotonic() + self.limits.setup_timeout)
                conn.listed = listed
                self._conns[request] = conn
                refusal = None
        for c in evicted:
            self.refusals.add(c.host, Refusal.PENDING)
            c.close()
        if refusal is None:
            return True
        self.refusals.add(host, refusal)
        return False

    def established(self, assoc):
        """The association is up: its slot leaves the pending budget; the idle deadline runs."""
        conn = getattr(assoc, "xray_conn", None)
        if conn is not None:
            conn.pending, conn.reason = False, Refusal.IDLE
            conn.deadline = time.monotonic() + self.limits.network_timeout

    def closed(self, assoc):
        """The connection is closed: it no longer counts against its address's cap, though
        its thread may take a moment more to end (a peer that releases and reconnects at
        once met its own closed connection at the cap)."""
        conn = getattr(assoc, "xray_conn", None)
        if conn is not None:
            conn.closed = True

    def malformed(self, assoc):
        """What arrived before any association request was no PDU of one: the reaper closes
        the connection at its next turn and counts it as malformed."""
        conn = getattr(assoc, "xray_conn", None)
        if conn is not None and conn.pending:
            conn.reason, conn.deadline = Refusal.MALFORMED, time.monotonic()

    def hold(self, assoc):
        """The node, not the peer, is working on the association: no deadline runs."""
        conn = getattr(assoc, "xray_conn", None)
        if conn is not None and not conn.pending:
            conn.deadline = float("inf")

    def message_complete(self, assoc):
        conn = getattr(assoc, "xray_conn", None)
        if conn is not None and not conn.pending:
            conn.deadline = time.monotonic() + self.limits.network_timeout

    def _reap(self):
        while not self._closing.wait(0.2):
            now = time.monotonic()
            with self._lock:
                expired = [c for c in self._conns.values()
                           if not c.expired and c.deadline <= now]
                for c in expired:
                    c.expired = True
            for c in expired:
                self.refusals.add(c.host, c.reason)
                c.close()
            self.refusals.tick()

    def close_all(self):
        """Shut every connection down (stopping: nobody's trickle holds the exit)."""
        self._closing.set()
        with self._lock:
            conns = list(self._conns.values())
        for c in conns:
            c.close()

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:  # however the connection ended (pynetdicom does not always close it here)
            with self._lock:
                conn = self._conns.pop(request, None)
            if conn is not None and not (conn.requested or conn.expired):
                # closed before an association request was decoded: malformed, or nothing
                self.refusals.add(conn.host, Refusal.MALFORMED)
            self.shutdown_request(request)

    def handle_error(self, request, client_address):
        log.warning("connection from %s ended with an error", client_address[0], exc_info=True)
