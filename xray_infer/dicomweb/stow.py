"""Results stored by STOW-RS, the answer read per instance (``store``): stored, refused (the
server will not take it: a 4xx, or the instance in the Failed SOP Sequence) or to be retried (an
instance the answer does not confirm). What says nothing about one instance (a 5xx without a
Failed SOP Sequence, a timeout, a connection dropped mid-upload, a garbled answer, a redirect)
is the server's state: ``Unavailable``, charged to no instance; ``store_results`` retries for a
one-shot run."""
import time
from enum import Enum

from ..destinations import WEB
from .access import Redirected, TooLarge, _phrase
from ..errors import XrayInferError

#: Answers that say the server as a whole cannot take anything now (not this instance).
SERVER_BUSY = (429, 503)
#: Answers that say this client may not store or read there: its set-up, not the instance.
NOT_ALLOWED = (401, 403, 404, 405, 407)
#: The longest a busy server's Retry-After parks the node (``destinations.WEB``).
MAX_RETRY_AFTER = WEB.node_retry_after


class Outcome(Enum):
    STORED = "stored"
    REFUSED = "refused"  # the server will not take it: sending it again changes nothing soon
    RETRY = "retry"      # it may be taken later: a 5xx, a timeout, a dropped connection


class Unavailable(XrayInferError):
    """The server takes nothing now (down, busy, or this client not allowed): no instance is to
    blame; what waits, waits. ``unreachable``: no connection opened at all (``connects`` says
    when that changes); ``retry_after``: the seconds a busy server asked for, or None."""

    def __init__(self, reason, unreachable=False, retry_after=None):
        super().__init__(reason)
        self.unreachable, self.retry_after = unreachable, retry_after


def retry_after(value, now=None):
    """The seconds a Retry-After header asks for (delta-seconds, or an HTTP date after ``now``),
    at most MAX_RETRY_AFTER; None where there is none or it does not parse."""
    from datetime import datetime, timezone
    from email.utils import parsedate_to_datetime
    value = (value or "").strip()
    if not value:
        return None
    try:
        seconds = float(value) if value.isdigit() else \
            (parsedate_to_datetime(value) - (now or datetime.now(timezone.utc))).total_seconds()
    except (TypeError, ValueError, OverflowError):  # garbled, or a date without a zone
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _answer(response):
    """The STOW-RS answer data set of an HTTP response, or None where it has none."""
    from pydicom import Dataset
    try:
        if "json" in response.headers.get("Content-Type", "") and response.content:
            body = response.json()
            return Dataset.from_json(body[0] if isinstance(body, list) else body)
    except Exception:  # not DICOM JSON: the status alone speaks
        pass
    return None


def _uids(answer, keyword):
    return {str(item.get("ReferencedSOPInstanceUID", "")): item
            for item in (answer.get(keyword) or [])} if answer is not None else {}


def _never_connected(e):
    """Whether a ConnectionError happened before any request was sent: no connection (refused,
    no route) or no TLS session (a certificate not trusted)."""
    import requests
    from urllib3.exceptions import NewConnectionError
    inner = e.args[0] if e.args else None
    return isinstance(e, requests.exceptions.SSLError) or \
        isinstance(getattr(inner, "reason", inner), NewConnectionError)


def store(client, datasets):
    """STOW-RS ``datasets`` in one request. Returns {SOP Instance UID: (Outcome, reason)}, an
    entry for each; raises Unavailable when the server takes nothing now, or answers nothing
    about these instances (a 5xx without a Failed SOP Sequence naming them, a timeout, a
    connection dropped mid-request, a garbled or oversized answer, a redirect): an outage is
    no instance's fault."""
    import requests
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    default = None
    try:
        answer = client.store_instances(datasets)
    except requests.HTTPError as e:
        code = e.response.status_code
        # the standard phrase, never the server's own text: it would land in the log
        said = f"answered HTTP {code} {_phrase(code)}".rstrip()
        if code in SERVER_BUSY or code in NOT_ALLOWED:
            asked = retry_after(e.response.headers.get("Retry-After")) \
                if code in SERVER_BUSY else None
            raise Unavailable(said, retry_after=asked) from None
        answer = _answer(e.response)
        if code >= 500 and not set(_uids(answer, "FailedSOPSequence")) & set(uids):
            raise Unavailable(said) from None  # the server's trouble, not these instances'
        kind = Outcome.RETRY if code >= 500 else Outcome.REFUSED
        default = (kind, f"HTTP {code}")
    except requests.ConnectionError as e:
        raise Unavailable(f"cannot be reached ({type(e).__name__})" if _never_connected(e)
                          else "dropped the connection mid-request",
                          unreachable=_never_connected(e)
                          and not isinstance(e, requests.exceptions.SSLError)) from None
    except requests.Timeout:
        raise Unavailable("sent no answer in time") from None
    except Redirected as e:
        raise Unavailable(str(e)) from None
    except (requests.RequestException, TooLarge, ValueError) as e:  # garbled or oversized
        raise Unavailable(f"sent no usable answer ({type(e).__name__})") from None
    stored, failed = _uids(answer, "ReferencedSOPSequence"), _uids(answer, "FailedSOPSequence")
    out = {}
    for uid in uids:
        if uid in failed:
            reason = failed[uid].get("FailureReason")
            why = f"failure reason 0x{int(reason):04X}" if reason is not None \
                else "in the Failed SOP Sequence"
            out[uid] = (default[0], f"{default[1]}, {why}") if default \
                else (Outcome.REFUSED, why)
        elif uid in stored:
            out[uid] = (Outcome.STORED, "")
        else:
            out[uid] = default or (Outcome.RETRY, "not confirmed by the STOW-RS answer")
    return out


def store_results(client, datasets, attempts=WEB.attempts, wait=WEB.wait,
                  longest=WEB.run_retry_after):
    """``store`` for a one-shot run: what is to be retried is sent again, up to ``attempts``
    times in all, waiting ``wait`` seconds, then twice that, or as long as a busy server asks
    (up to ``longest``). Returns None when every data set was stored, else why not (one line);
    raises Unavailable when the server took nothing at the last try."""
    pending = list(datasets)
    why, asked, unavailable = "", 0.0, None
    for attempt in range(attempts):
        if attempt:
            time.sleep(max(wait * 2 ** (attempt - 1), min(asked, longest)))
        asked, unavailable = 0.0, None
        try:
            outcome = store(client, pending)
        except Unavailable as e:
            unavailable, asked = e, e.retry_after or 0.0
            continue
        answers = [(ds, *outcome[str(ds.SOPInstanceUID)]) for ds in pending]
        refused = [reason for _, kind, reason in answers if kind is Outcome.REFUSED]
        if refused:
            return f"refused by the DICOMweb server: {refused[0]}"
        retry = [(ds, reason) for ds, kind, reason in answers if kind is Outcome.RETRY]
        if not retry:
            return None
        pending, why = [ds for ds, _ in retry], retry[0][1]
    if unavailable is not None:
        raise unavailable
    return f"not stored after {attempts} attempts: {why}"
