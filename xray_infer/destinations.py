"""How long and how often this program waits on a destination, one record per kind of
destination, one setting a line (the node's own bounds on its peers are ``node.policy.Limits``).
The defaults are the numbers used everywhere: the node's forwarder, ``send``, and ``classify
--dicom-out``."""
from dataclasses import dataclass


@dataclass(frozen=True)
class DicomDestination:
    """A DICOM peer (C-STORE): the node's ``--forward HOST:PORT:AET`` and ``xray-infer send``."""
    #: seconds for the association and for each answer and network read of it
    timeout: float = 30.0


@dataclass(frozen=True)
class WebDestination:
    """A DICOMweb server (STOW-RS, WADO-RS, QIDO-RS): ``--forward URL``, ``--dicom-out URL``
    and DICOMweb inputs."""
    #: seconds to connect, and between two reads of an answer
    timeout: float = 60.0
    #: seconds from an answer's first byte to its last: a server that trickles is cut
    answer_deadline: float = 300.0
    #: ``classify --dicom-out URL``: tries of one input's results, ...
    attempts: int = 3
    #: ... the seconds before the second try (doubled for each later one) ...
    wait: float = 1.0
    #: ... and the longest a busy server's Retry-After is honoured, in seconds
    run_retry_after: float = 60.0
    #: the node: the longest a busy server's Retry-After is honoured, in seconds (a server
    #: cannot park it for longer at a time)
    node_retry_after: float = 600.0


DICOM, WEB = DicomDestination(), WebDestination()
