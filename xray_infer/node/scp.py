"""The node: a Storage SCP (``receiver``) that admits only listed peers, checks each radiograph
before acknowledging it and spools it, and a supervised worker (``forwarder``) that classifies
the spool and forwards the results; metrics and health beside them.

Every number that bounds it is in ``policy.Limits``; every refusal in ``refusals.Refusal``.
"""
import logging
import os
import shutil
import ssl
import threading
import time

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ..classifier import Classifier
from ..options import ScoringOptions
from ..model import model_digest
from .forwarder import Forwarder
from .metrics import NodeMetrics, Progress
from ..audit import AuditTrail
from ..peer import Peer
from .network import ClientCertificates, GuardedServer
from .policy import DEFAULT_AE_TITLE, Allowlist, Limits
from .receiver import RADIOGRAPH_CLASSES, TRANSFER_SYNTAXES, Receiver
from .refusals import RefusalLog
from .spool import Spool

log = logging.getLogger("xray_infer.node")


class Node:
    """Storage SCP + a worker that classifies the spool and forwards the results."""

    def __init__(self, port: int, forward: "Peer | str", spool: "str | os.PathLike[str]",
                 allow: Allowlist, *, ae_title: str = DEFAULT_AE_TITLE,
                 host: str = "127.0.0.1", batch_size: "int | None" = None,
                 model: "str | None" = None, limits: Limits = Limits(),
                 tls: "ssl.SSLContext | None" = None, forward_tls: object = None,
                 metrics_port: "int | None" = None, metrics_host: str = "127.0.0.1",
                 scope: "bool | str" = True, ages: "tuple[int, int] | None" = None,
                 audit: "AuditTrail | None" = None,
                 tls_clients: "ClientCertificates | None" = None) -> None:
        """A node listening on ``host``:``port`` as ``ae_title``, admitting the callers of
        ``allow``, keeping what it receives in ``spool`` until its results (SR and SC) are
        stored at ``forward`` (a DICOM peer, or a DICOMweb base URL with its
        ``dicomweb.Access`` as ``forward_tls``).

        Parameters
        ----------
        limits : Limits
            Every bound a peer could exhaust (``policy.Limits``).
        tls, forward_tls : ssl.SSLContext, optional
            DICOM TLS on the listening port and towards ``forward``.
        tls_clients : ClientCertificates, optional
            What a client's certificate must be beyond chain validation.
        metrics_port, metrics_host : optional
            Prometheus ``/metrics`` and ``/healthz``.
        scope, ages : optional
            The scope gate, as ``Classifier``'s.
        audit : AuditTrail, optional
            The audit trail (``xray_infer.audit``).
        """
        if not isinstance(allow, Allowlist):
            raise TypeError("allow must be an Allowlist (Allowlist(any=True) admits everyone)")
        self.port, self.host, self.forward = port, host, forward
        self.ae_title, self.limits, self.tls = ae_title, limits, tls
        self.tls_clients = tls_clients  # a network.ClientCertificates, or the default
        self.metrics_port, self.metrics_host = metrics_port, metrics_host
        self.allow = allow.resolved()
        self.spool = Spool(spool, limits.min_free_mb * 2 ** 20)
        self.metrics = NodeMetrics(lambda: len(self.spool.pending()), self.spool.quarantined)
        self.audit = audit  # an audit.AuditTrail, or None
        self.refusals = RefusalLog(self.metrics, limits.refusal_log_interval, audit=audit)
        self.progress = Progress()
        self.classifier = Classifier.from_options(ScoringOptions(
            model=model, batch_size=batch_size, scope=scope, ages=ages, heatmaps=True, workers=2))
        digest = model_digest(self.classifier.variant.path)  # the file that scores
        self.forwarder = Forwarder(
            spool=self.spool, classifier=self.classifier, digest=digest, forward=forward,
            forward_tls=forward_tls, ae_title=ae_title, limits=limits, metrics=self.metrics,
            progress=self.progress, batch_size=self.classifier.batch_size, audit=audit)
        self.receiver = Receiver(
            ae_title=ae_title, allow=self.allow, limits=limits, spool=self.spool,
            metrics=self.metrics, refusals=self.refusals, spec=self.classifier.spec,
            digest=digest, wake=self.forwarder.wake.set, audit=audit)
        self._stopped = threading.Event()
        self._ae: "AE | None" = None
        self._server: "GuardedServer | None" = None
        self._http = None

    def health(self):
        """(healthy, state) for ``/healthz``: 503 when the spool cannot take an instance (not
        writable, or below its free-space reserve), when the forwarding worker is not running,
        or when work is pending and none has moved for ``limits.stall_seconds``."""
        try:
            self.spool.check_writable()
            writable = True
        except OSError:
            writable = False
        try:
            free = shutil.disk_usage(self.spool.incoming).free
            pending, quarantined = len(self.spool.pending()), self.spool.quarantined()
        except OSError:
            free, pending, quarantined = 0, None, None
        stalled = self.progress.stalled_for()
        state = {"spool_writable": writable, "spool_free_mb": free // 2 ** 20,
                 "spool_reserve_mb": self.limits.min_free_mb, "pending": pending,
                 "quarantined": quarantined,
                 "forwarder_running": self.forwarder.alive(),
                 "seconds_since_progress": round(stalled),
                 "destination_last_seen": None if self.forwarder.destination_last_seen is None
                 else time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                    time.gmtime(self.forwarder.destination_last_seen))}
        ok = (writable and free >= self.spool.min_free_bytes and self.forwarder.alive()
              and pending is not None and not (pending and stalled > self.limits.stall_seconds))
        return ok, state

    # -- running -------------------------------------------------------------------------------
    def start(self) -> None:
        """Process what the spool already holds, then accept associations."""
        if self.audit is not None:
            self.audit.start()
        swept = self.spool.sweep()
        if swept:
            log.info("removed %d partial file(s) an earlier run left in the spool", swept)
        limits = self.limits
        ae = self._ae = AE(ae_title=self.ae_title)
        for sop_class in RADIOGRAPH_CLASSES:
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_called_aet = True
        # pynetdicom counts connections not yet associated against this; the node's own limits
        # (receiver: associations; server: connections pending) decide instead
        ae.maximum_associations = limits.max_associations + limits.max_pending
        ae.acse_timeout = limits.setup_timeout
        ae.network_timeout = limits.network_timeout
        ae.dimse_timeout = limits.dimse_timeout
        server = ae.make_server((self.host, self.port), evt_handlers=self.receiver.handlers(),
                                server_class=GuardedServer, tls=self.tls,
                                clients=self.tls_clients, limits=limits,
                                refusals=self.refusals, allow=self.allow)
        assert isinstance(server, GuardedServer)
        self._server = self.receiver.server = server
        ae._servers.append(server)  # as ae.start_server does: shutdown() expects it
        if self.metrics_port is not None:
            self._http = self.metrics.serve(self.metrics_host, self.metrics_port, limits,
                                            self.health)
        self.forwarder.start()
        threading.Thread(target=server.serve_forever, name="xray-node-server",
                         daemon=True).start()
        if self.allow.any:
            log.warning("any caller admitted: every peer that can reach %s:%d may send to "
                        "this node", self.host, self.port)
        dicom_tls = self.forwarder.forward_tls and self.forwarder.web is None
        log.info("listening as %s on %s:%d%s, forwarding to %s%s, spool %s, %s", self.ae_title,
                 self.host, self.port, " (TLS)" if self.tls else "", self.forward,
                 " (TLS)" if dicom_tls else "", self.spool.root,
                 "any caller" if self.allow.any else
                 "callers " + ", ".join(map(str, self.allow.callers)))

    def stop(self, timeout: "float | None" = None) -> None:
        """Cut every connection, stop accepting, let the forwarder finish its batch if it can
        within ``timeout`` seconds (``limits.stop_timeout``), then return: instances not
        delivered stay in the spool. Nothing a peer does holds it longer."""
        timeout = self.limits.stop_timeout if timeout is None else timeout
        if self._server is not None:
            self._server.close_all()  # sockets first: a trickling peer's thread ends at once
        if self._ae is not None:
            for assoc in list(self._ae.active_associations):
                threading.Thread(target=assoc.abort, daemon=True).start()
        if self._server is not None:
            self._server.shutdown()
        if self._http is not None:
            self._http.shutdown()
        self.forwarder.stop(timeout)
        try:
            left: "int | str" = len(self.spool.pending())
        except OSError:
            left = "?"
        log.info("stopped; %s instance(s) left in the spool", left)
        if self.audit is not None:
            self.audit.close()
        self._stopped.set()

    def wait(self) -> None:
        """Return once ``stop`` (from another thread, a signal handler's) has finished."""
        while not self._stopped.wait(0.2):
            pass
