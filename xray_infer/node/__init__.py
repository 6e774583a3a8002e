"""A DICOM node: receives chest radiographs (C-STORE) from listed peers, classifies them, and
forwards the results (a Structured Report and a Secondary Capture of the heatmap) to a PACS;
and the sender used to feed it. Networking by pynetdicom (the ``dicom`` extra).

- ``policy``: who may associate, every limit and its default (``Limits``), identifier checks;
- ``refusals``: every reason for a refusal, its status or reject code and what the peer is
  told; the log that sums refusals of connections;
- ``network``: TLS, associating, what counts as stored, the association server that holds
  each connection to a deadline;
- ``receiver``: associations and C-STORE: what each PDU may cost, the checks before an
  acknowledgement; ``spool``: where acknowledged instances wait;
- ``forwarder``: the supervised worker that classifies the spool and delivers the results;
- ``scp``: the node, which puts them together; ``sender``: ``send``;
- ``metrics``: Prometheus metrics and ``/healthz`` on a bounded, local server.

Durability: an instance is written to the spool atomically before it is acknowledged, and
leaves it only after the destination stored both results. Result UIDs are derived from the
source instance and the model (``dicom_results.result_uids``), so an instance scored again after
a crash or a failed forward reaches the PACS as the same objects: each result arrives once.
"""
# Light on import: the command line reads ``policy`` (defaults, argument checks) before it
# knows whether the dicom extra is installed; the rest loads on first use.
from ..peer import Peer
from .policy import Allowlist, Caller, Limits

_LAZY = {"AssociationError": "network", "is_stored": "network", "tls_context": "network",
         "Node": "scp", "send": "sender"}
__all__ = ["AssociationError", "Allowlist", "Caller", "Limits", "Node", "Peer", "is_stored",
           "send", "tls_context"]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
