"""A DICOM node: receives chest radiographs (C-STORE) from listed peers, classifies them, and
forwards the results (a Structured Report and a Secondary Capture of the heatmap) to a PACS;
and the sender used to feed it. Networking by pynetdicom (the ``dicom`` extra).

- ``policy``: who may associate, resource limits and their defaults, identifier checks;
- ``network``: TLS, associating, what counts as stored, the bounded association server;
- ``spool``: where acknowledged instances wait for their results to be delivered;
- ``scp``: the node (receiving, checking, classifying, forwarding); ``send``: the sender;
- ``metrics``: Prometheus metrics and ``/healthz``.

Durability: an instance is written to the spool atomically before it is acknowledged, and
leaves it only after the destination stored both results. Result UIDs are derived from the
source instance and the model (``dicom_results.result_uids``), so an instance scored again after
a crash or a failed forward reaches the PACS as the same objects: each result arrives once.
"""
from ..peer import Peer
from .network import AssociationError, is_stored, tls_context
from .policy import Allowlist, Caller, Limits
from .scp import Node
from .send import send

__all__ = ["AssociationError", "Allowlist", "Caller", "Limits", "Node", "Peer", "is_stored",
           "send", "tls_context"]
