"""The node's Prometheus metrics and its ``/healthz``, on one small HTTP server
(``prometheus_client`` renders the metrics; each node has a registry of its own).

The server binds 127.0.0.1 unless told otherwise (``--metrics-host``), holds at most
``limits.metrics_connections`` connections and gives each request ``limits.metrics_timeout``
seconds from connect to answer: idle connections cannot exhaust the node's file descriptors.
"""
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               generate_latest)

from .refusals import Refusal

log = logging.getLogger("xray_infer.node")


class NodeMetrics:
    def __init__(self, spool_depth, quarantined=lambda: 0):
        r = self.registry = CollectorRegistry()
        p = "xray_infer_node_"
        self.received = Counter(p + "received", "Instances acknowledged (spooled)", registry=r)
        self.refused = Counter(p + "refused", "Connections, associations and instances "
                               "refused", ["reason"], registry=r)
        self.own_results = Counter(p + "own_results", "Results of this model received back, "
                                   "acknowledged and not classified", registry=r)
        self.classified = Counter(p + "classified", "Instances classified", registry=r)
        self.out_of_scope = Counter(p + "out_of_scope", "Instances the model was not made for "
                                    "(acknowledged, nothing forwarded), by the gate that "
                                    "refused them", ["gate"], registry=r)
        self.forwarded = Counter(p + "forwarded", "Instances whose results the destination "
                                 "stored", registry=r)
        self.retried = Counter(p + "retried", "Instances the destination refused (or aborted "
                               "on), to be retried", registry=r)
        self.quarantined = Counter(p + "quarantined", "Instances moved to failed/", registry=r)
        self.worker_restarts = Counter(p + "worker_restarts", "Times the forwarding worker "
                                       "failed and was restarted", registry=r)
        self.forwarder_passes = Counter(p + "forwarder_passes", "Times the forwarding worker "
                                        "looked at the spool (flat: the worker is stuck)",
                                        registry=r)
        self.associations = Counter(p + "associations", "Associations requested", ["outcome"],
                                    registry=r)
        self.open_associations = Gauge(p + "open_associations", "Associations open now",
                                       registry=r)
        self.inflight = Gauge(p + "inflight_datasets", "Data sets being received now (each "
                              "holds a slot of the in-flight budget)", registry=r)
        depth = Gauge(p + "spool_depth", "Instances waiting in the spool", registry=r)
        depth.set_function(spool_depth)
        held = Gauge(p + "quarantine_depth", "Instances in the spool's failed/ now, waiting for "
                     "someone to look at them", registry=r)
        held.set_function(quarantined)
        for refusal in Refusal:
            self.refused.labels(refusal.label)

    def serve(self, host, port, limits, health):
        """Start the HTTP server in a daemon thread; returns it (``shutdown()`` stops it).
        ``health()`` returns (healthy, a JSON-able state) for ``/healthz``."""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            timeout = limits.metrics_timeout  # between bytes; the deadline is the timer's

            def setup(self):
                super().setup()
                self._deadline = threading.Timer(limits.metrics_timeout, self._cut)
                self._deadline.daemon = True
                self._deadline.start()

            def _cut(self):
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def finish(self):
                self._deadline.cancel()
                try:
                    super().finish()
                except OSError:  # cut at the deadline
                    pass

            def do_GET(self):
                if self.path == "/metrics":
                    body, ctype, code = generate_latest(metrics.registry), CONTENT_TYPE_LATEST, 200
                elif self.path == "/healthz":
                    ok, state = health()
                    body, ctype, code = json.dumps(state).encode(), "application/json", \
                        200 if ok else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # scrapes every few seconds: not worth a log line
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def __init__(self, *args):
                self.open, self.lock = 0, threading.Lock()
                super().__init__(*args)

            def verify_request(self, request, client_address):
                with self.lock:
                    if self.open >= limits.metrics_connections:
                        return False
                    self.open += 1
                return True

            def process_request_thread(self, request, client_address):
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    with self.lock:
                        self.open -= 1

            def handle_error(self, request, client_address):
                pass  # a client that went away, or one cut at its deadline

        server = Server((host, port), Handler)
        threading.Thread(target=server.serve_forever, name="xray-node-metrics",
                         daemon=True).start()
        return server


class Progress:
    """When the forwarder last moved an instance on (delivered, out of scope, quarantined) or
    found nothing to do: ``/healthz`` turns 503 when work is pending and none has moved for
    ``stall_seconds``."""

    def __init__(self):
        self.last = time.monotonic()

    def moved(self):
        self.last = time.monotonic()

    def stalled_for(self):
        return time.monotonic() - self.last
