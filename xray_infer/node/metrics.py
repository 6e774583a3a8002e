"""The node's Prometheus metrics and its ``/healthz``, on one small HTTP server
(``prometheus_client`` renders the metrics; each node has a registry of its own)."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               generate_latest)

#: Why an association or an instance was refused: the ``reason`` label's values (a fixed set,
#: so a peer cannot grow the metrics).
REFUSAL_REASONS = ("unknown_peer", "called_ae", "busy", "sop_class", "identifiers",
                   "too_large", "undecodable", "spool_full", "spool_error", "memory")


class NodeMetrics:
    def __init__(self, spool_depth, spool_writable):
        r = self.registry = CollectorRegistry()
        p = "xray_infer_node_"
        self.received = Counter(p + "received", "Instances acknowledged (spooled)", registry=r)
        self.refused = Counter(p + "refused", "Associations and instances refused",
                               ["reason"], registry=r)
        self.own_results = Counter(p + "own_results", "Results of this model received back, "
                                   "acknowledged and not classified", registry=r)
        self.classified = Counter(p + "classified", "Instances classified", registry=r)
        self.out_of_scope = Counter(p + "out_of_scope", "Instances the model was not made for "
                                    "(acknowledged, nothing forwarded), by the gate that "
                                    "refused them", ["gate"], registry=r)
        self.forwarded = Counter(p + "forwarded", "Instances whose results the destination "
                                 "stored", registry=r)
        self.retried = Counter(p + "retried", "Instances the destination refused, to be "
                               "retried", registry=r)
        self.quarantined = Counter(p + "quarantined", "Instances moved to failed/", registry=r)
        self.associations = Counter(p + "associations", "Associations requested", ["outcome"],
                                    registry=r)
        self.open_associations = Gauge(p + "open_associations", "Associations open now",
                                       registry=r)
        depth = Gauge(p + "spool_depth", "Instances waiting in the spool", registry=r)
        depth.set_function(spool_depth)
        self._spool_writable = spool_writable
        self.destination_last_seen = None  # time.time() of the last association with it
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)

    def health(self):
        writable = self._spool_writable()
        seen = self.destination_last_seen
        return writable, {"spool_writable": writable, "destination_last_seen":
                          None if seen is None else time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                  time.gmtime(seen))}

    def serve(self, host, port):
        """Start the HTTP server in a daemon thread; returns it (``shutdown()`` stops it)."""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/metrics":
                    body, ctype, code = generate_latest(metrics.registry), CONTENT_TYPE_LATEST, 200
                elif self.path == "/healthz":
                    ok, state = metrics.health()
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

        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="xray-node-metrics",
                         daemon=True).start()
        return server
