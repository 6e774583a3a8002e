"""DICOMweb (the ``dicomweb`` extra, dicomweb-client): results stored by STOW-RS, inputs
retrieved by WADO-RS and found by QIDO-RS.

Credentials come from a file or the ``XRAY_INFER_DICOMWEB_AUTH`` environment variable, never
from the command line, and are never logged: a URL carrying a user or password is refused.
A STOW-RS answer is read per instance (``store``): stored, refused (the server will not take
it: a 4xx, or the instance in the Failed SOP Sequence) or to be retried (a 5xx, a timeout, a
connection dropped mid-upload, or an instance the answer does not confirm).
"""
import base64
import io
import logging
import os
import time
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus
from urllib.parse import quote, urlsplit

from .errors import InputError

log = logging.getLogger("xray_infer.dicomweb")

AUTH_ENV = "XRAY_INFER_DICOMWEB_AUTH"
#: Answers that say the server as a whole cannot take anything now (not this instance).
SERVER_BUSY = (429, 503)
#: Answers that say this client may not store or read there: its set-up, not the instance.
NOT_ALLOWED = (401, 403, 404, 405, 407)
#: The largest HTTP answer read (an instance retrieved, a listing): a file's bound, as
#: ``decode.MAX_FILE_BYTES``; a multipart wrapping adds little.
MAX_ANSWER_BYTES = (512 << 20) + (1 << 20)
#: The longest a server's Retry-After is honoured, in seconds: a server cannot park the node for
#: longer than this at a time.
MAX_RETRY_AFTER = 600.0
#: QIDO-RS page size: studies are listed a page at a time.
PAGE = 100
_IMAGE_CLASS_SUFFIXES = ("Image Storage", "Image Storage - For Presentation",
                         "Image Storage - For Processing")


def is_dicomweb(text):
    return str(text).lower().startswith(("http://", "https://"))


def check_url(url):
    """``url`` without a trailing slash, or ValueError saying what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url}: not an http:// or https:// URL")
    if parts.username or parts.password:
        raise ValueError("a DICOMweb URL may not carry credentials (they would be on the "
                         f"command line): put them in a file (--dicomweb-auth) or {AUTH_ENV}")
    if parts.query or parts.fragment:
        raise ValueError(f"{url}: a DICOMweb URL has no query or fragment (use --query)")
    return url.rstrip("/")


def authorization(path=None):
    """The Authorization header value from the file ``path``, else from ``AUTH_ENV``, else
    None. Either holds one line: ``bearer TOKEN`` or ``basic USER:PASSWORD``. The errors name
    where the credentials came from, never what they hold."""
    where = path or AUTH_ENV
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read(64 * 1024)
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: credentials cannot be read: "
                             f"{getattr(e, 'strerror', None) or type(e).__name__}") from None
    else:
        text = os.environ.get(AUTH_ENV)
        if not text:
            return None
    kind, _, secret = text.strip().partition(" ")
    secret = secret.strip()
    if kind.lower() == "bearer" and secret and "\n" not in secret:
        return f"Bearer {secret}"
    if kind.lower() == "basic" and ":" in secret and "\n" not in secret:
        return "Basic " + base64.b64encode(secret.encode()).decode()
    raise ValueError(f"{where}: credentials must be one line, 'bearer TOKEN' or "
                     f"'basic USER:PASSWORD'")


@dataclass(frozen=True)
class Access:
    """How to reach a DICOMweb server: a CA to verify it by (else the system's), a client
    certificate and key, credentials (``authorization``) and a timeout per request."""
    ca: str = None
    cert: str = None
    key: str = None
    auth_file: str = None
    timeout: float = 60.0

    def check(self):
        """ValueError for a set-up that cannot work, before anything is sent."""
        if bool(self.cert) != bool(self.key):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        authorization(self.auth_file)

    def client(self, url):
        import requests
        from dicomweb_client.api import DICOMwebClient
        ca = self.ca

        class Session(requests.Session):
            def merge_environment_settings(self, *args):
                # A CA named here wins over REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE, which requests
                # otherwise prefers to a session's own; proxies still come from the environment.
                settings = super().merge_environment_settings(*args)
                if ca:
                    settings["verify"] = ca
                return settings

        session = Session()
        session.hooks["response"].append(_bounded)
        session.verify = ca or True
        if self.cert:
            session.cert = (self.cert, self.key)
        header = authorization(self.auth_file)
        if header:
            def authorize(request):  # an auth of its own: a ~/.netrc entry cannot replace it
                request.headers["Authorization"] = header
                return request
            session.auth = authorize
        client = DICOMwebClient(url, session=session, timeout=self.timeout)
        client.set_http_retry_params(retry=False)  # the callers retry, with their own bounds
        return client


class TooLarge(Exception):
    """An HTTP answer declared or sent more than MAX_ANSWER_BYTES."""


def _bounded(response, *args, **kwargs):
    """A response hook (it runs before the body is read): an answer larger than
    MAX_ANSWER_BYTES is refused by its declared length, or cut where it passes the bound, so
    a server cannot choose how much memory a request takes."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
        response.close()
        raise TooLarge(f"an answer of {int(declared) >> 20} MiB")
    stream = response.raw.stream

    def counted(*a, **k):
        total = 0
        for chunk in stream(*a, **k):
            total += len(chunk)
            if total > MAX_ANSWER_BYTES:
                response.close()
                raise TooLarge(f"an answer past {MAX_ANSWER_BYTES >> 20} MiB")
            yield chunk
    response.raw.stream = counted
    return response


class Outcome(Enum):
    STORED = "stored"
    REFUSED = "refused"  # the server will not take it: sending it again changes nothing soon
    RETRY = "retry"      # it may be taken later: a 5xx, a timeout, a dropped connection


class Unavailable(Exception):
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


def connects(url, timeout=10.0):
    """Whether a TCP connection opens now to where a request for ``url`` goes (its host, or the
    proxy the environment names for it): a server that could not be reached is tried this
    cheaply before anything is computed for it again."""
    import socket

    from requests.utils import get_environ_proxies
    target = get_environ_proxies(url).get(urlsplit(url).scheme) or url
    parts = urlsplit(target if "://" in target else f"http://{target}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


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


def _phrase(code):
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return ""


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
    entry for each; raises Unavailable when the server takes nothing now."""
    import requests
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    default = None
    try:
        answer = client.store_instances(datasets)
    except requests.HTTPError as e:
        code = e.response.status_code
        if code in SERVER_BUSY or code in NOT_ALLOWED:
            # the standard phrase, never the server's own text: it would land in the log
            asked = retry_after(e.response.headers.get("Retry-After")) \
                if code in SERVER_BUSY else None
            raise Unavailable(f"answered HTTP {code} {_phrase(code)}".rstrip(),
                              retry_after=asked) from None
        kind = Outcome.RETRY if code >= 500 else Outcome.REFUSED
        answer, default = _answer(e.response), (kind, f"HTTP {code}")
    except requests.ConnectionError as e:
        if _never_connected(e):
            raise Unavailable(f"cannot be reached ({type(e).__name__})",
                              unreachable=not isinstance(e, requests.exceptions.SSLError)) \
                from None
        return {u: (Outcome.RETRY, "the connection failed mid-request") for u in uids}
    except requests.Timeout:
        return {u: (Outcome.RETRY, "no answer in time") for u in uids}
    except (requests.RequestException, TooLarge) as e:  # a garbled or oversized answer
        return {u: (Outcome.RETRY, f"no usable answer ({type(e).__name__})") for u in uids}
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


def store_results(client, datasets, attempts=3, wait=1.0, longest=60.0):
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


# -- input ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Address:
    """A DICOMweb resource: the service's ``base`` URL and the UIDs below it."""
    base: str
    study: str = None
    series: str = None
    instance: str = None

    @classmethod
    def parse(cls, url):
        url = check_url(url)
        base, sep, rest = url.partition("/studies/")
        if not sep:
            return cls(base)
        names = rest.split("/")
        uids = dict(zip(names[1::2], names[2::2]))
        if len(names) % 2 != 1 or set(uids) - {"series", "instances"} \
                or ("instances" in uids and "series" not in uids) or not names[0]:
            raise ValueError(f"{url}: not a study, series or instance URL "
                             "(.../studies/UID[/series/UID[/instances/UID]])")
        return cls(base, names[0], uids.get("series"), uids.get("instances"))

    def url(self):
        out = self.base
        for name, uid in (("studies", self.study), ("series", self.series),
                          ("instances", self.instance)):
            if uid:
                out += f"/{name}/{quote(uid, safe='.')}"
        return out


def _value(item, tag):
    values = (item.get(tag) or {}).get("Value") or [None]
    return values[0]


def is_image_class(uid):
    from pydicom.uid import UID
    return UID(uid).name.endswith(_IMAGE_CLASS_SUFFIXES)


def list_instances(client, address, query=None, skipped=None):
    """Instance URLs under ``address`` (a study or series), or of every study matching
    ``query`` (QIDO-RS search filters) at the base; studies a page at a time. Instances that
    are not images (reports, presentation states) are left out, each added to ``skipped`` as
    (url, reason), as are the heatmaps this program stored there."""
    from .dicom_results import SC_SERIES_DESCRIPTION
    if address.study:
        studies = iter([address.study])
    else:
        studies = _matching_studies(client, query or {})
    for study in studies:
        found = client.search_for_instances(
            study_instance_uid=study, series_instance_uid=address.series,
            fields=["SOPClassUID", "SeriesInstanceUID", "SeriesDescription"], get_remaining=True)
        rows = sorted((_value(i, "0020000E") or "", _value(i, "00080018") or "",
                       _value(i, "00080016") or "", _value(i, "0008103E") or "") for i in found)
        for series, instance, sop_class, description in rows:
            if address.instance and instance != address.instance:
                continue
            url = Address(address.base, study, series, instance).url()
            why = None
            if sop_class and not is_image_class(sop_class):
                why = "not an image (a DICOM object of another kind)"
            elif description == SC_SERIES_DESCRIPTION:
                why = "not an image (a heatmap this program stored)"
            if why is None:
                yield url
            elif skipped is not None:
                skipped.append((url, why))


def _matching_studies(client, query):
    offset = 0
    while True:
        page = client.search_for_studies(search_filters=dict(query), limit=PAGE, offset=offset,
                                         fields=["StudyInstanceUID"])
        for study in page:
            yield _value(study, "0020000D")
        if len(page) < PAGE:
            return
        offset += len(page)


def retrieve(client, url):
    """The encoded bytes of the instance at ``url`` (WADO-RS). Raises InputError naming it."""
    import requests
    a = Address.parse(url)
    try:
        ds = client.retrieve_instance(a.study, a.series, a.instance)
    except requests.HTTPError as e:
        raise InputError(url, f"not retrieved: HTTP {e.response.status_code}") from None
    except TooLarge as e:
        raise InputError(url, f"not retrieved: {e}") from None
    except (requests.RequestException, OSError, ValueError) as e:
        raise InputError(url, f"not retrieved: {type(e).__name__}") from None
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
