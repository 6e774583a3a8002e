"""``send``: C-STORE files to a DICOM peer, one file in memory at a time."""
import ssl
from collections.abc import Callable, Iterable

from pydicom import dcmread
from pynetdicom import AE

from .network import AssociationError, associate, is_stored, response_status
from ..destinations import DICOM
from ..peer import Peer
from .policy import DEFAULT_AE_TITLE

#: Presentation contexts one association can request (PS3.8: odd context ids 1 to 255).
MAX_CONTEXTS = 128


def _header(path):
    """(SOP class, transfer syntax) from a file's meta and first elements, without its pixels."""
    ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    return ds.SOPClassUID, ds.file_meta.TransferSyntaxUID


def send(paths: "Iterable[str]", peer: Peer, ae_title: str = DEFAULT_AE_TITLE,
         report: "Callable[[str], object]" = print, tls: "ssl.SSLContext | None" = None,
         timeout: float = DICOM.timeout) -> "dict[str, int | str]":
    """C-STORE each file to ``peer``.

    Parameters
    ----------
    paths : iterable of str
        DICOM files, read one at a time (headers first, for the presentation contexts), so
        memory does not grow with their number.
    peer : Peer
        The receiving node or PACS (host, port, AE title).
    ae_title : str
        This sender's AE title.
    report : callable
        Called with one line per file as it is settled.
    tls : ssl.SSLContext, optional
        DICOM TLS.
    timeout : float
        Seconds for each network step.

    Returns
    -------
    dict
        {path: status code (stored) or the reason it was not}; every path gets an entry.

    Raises
    ------
    AssociationError
        When no association could be made at all.
    """
    outcome, headers = {}, {}

    def settle(p, value):
        outcome[p] = value
        report(f"{p}: " + (f"stored (0x{value:04X})" if isinstance(value, int) else value))

    for p in paths:
        try:
            headers[p] = _header(p)
        except Exception as e:  # not DICOM, unreadable, no SOP class or transfer syntax
            settle(p, f"not sent: unreadable DICOM ({type(e).__name__}: {e})")
    contexts = sorted(set(headers.values()))
    if not contexts:
        return outcome
    if len(contexts) > MAX_CONTEXTS:
        raise AssociationError(f"{len(contexts)} kinds of object (SOP class and transfer syntax) "
                               f"in one run; one association takes {MAX_CONTEXTS}: send them "
                               f"in several runs")
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    # One presentation context per (SOP class, transfer syntax) pair: a context offering
    # several syntaxes may be accepted with one the data set is not encoded in.
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    assoc = associate(ae, peer, tls)
    try:
        for p in headers:
            if not assoc.is_established:
                settle(p, "not sent: the association ended before it")
                continue
            try:
                status = assoc.send_c_store(dcmread(p))
            except ValueError as e:  # the peer accepted no context for this class and syntax
                settle(p, f"not sent: {e}")
                continue
            except Exception as e:  # unreadable now, or the connection failed mid-way
                settle(p, f"not sent: {type(e).__name__}: {e}")
                continue
            code = response_status(status)
            if code is None:
                settle(p, "not stored: no response (the association was aborted)")
            elif is_stored(code):
                settle(p, code)
            else:
                comment = str(status.get("ErrorComment", "")).strip()
                settle(p, f"refused with status 0x{code:04X} {comment}".rstrip())
    finally:
        if assoc.is_established:
            assoc.release()
    return outcome
