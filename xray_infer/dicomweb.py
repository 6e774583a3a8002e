"""DICOMweb (the ``dicomweb`` extra, dicomweb-client): results stored by STOW-RS, inputs
retrieved by WADO-RS and found by QIDO-RS.

Credentials come from a file or the ``XRAY_INFER_DICOMWEB_AUTH`` environment variable, never
from the command line, and are never logged: a URL carrying a user or password is refused.
A STOW-RS answer is read per instance (``store``): stored, refused (the server will not take
it: a 4xx, or the instance in the Failed SOP Sequence) or to be retried (an instance the
answer does not confirm). What says nothing about one instance (a 5xx without a Failed SOP
Sequence, a timeout, a connection dropped mid-upload, a garbled answer) is the server's state:
``Unavailable``, charged to no instance.

Every answer is bounded: in bytes, in multipart parts (counted before anything parses them), in
time from its first byte, and a listing in pages; redirects are followed only for GET within
the same origin.
"""
import base64
import io
import logging
import os
import threading
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
#: A DICOM JSON answer (a QIDO-RS listing, a STOW-RS answer) larger than this is refused: JSON
#: takes several times its size in memory once parsed.
MAX_JSON_BYTES = 32 << 20
#: Parts in one multipart answer (an instance retrieved is one): counted as they arrive.
MAX_PARTS = 16
#: Seconds from the first byte of an answer to its last: a server that trickles is cut.
ANSWER_DEADLINE = 300.0
#: QIDO-RS page size: studies and instances are listed a page at a time.
PAGE = 100
#: Pages of one listing; a server that pages without end (the same page whatever the offset)
#: is caught sooner, by a page that adds nothing new.
MAX_PAGES = 1000
#: Instances one input URL or query may list.
MAX_INSTANCES = 100_000
_IMAGE_CLASS_SUFFIXES = ("Image Storage", "Image Storage - For Presentation",
                         "Image Storage - For Processing")


def is_dicomweb(text):
    return str(text).lower().startswith(("http://", "https://"))


def check_url(url):
    """``url`` without a trailing slash, or ValueError saying what is wrong with it."""
    parts = urlsplit(url)
    # a message names the URL without what may carry a secret: user info, query, fragment
    shown = f"{parts.scheme}://{parts.hostname or ''}" + \
        (f":{parts.port}" if parts.port else "") + parts.path
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{shown}: not an http:// or https:// URL")
    if parts.username or parts.password:
        raise ValueError("a DICOMweb URL may not carry credentials (they would be on the "
                         f"command line): put them in a file (--dicomweb-auth; listen: "
                         f"--forward-auth) or {AUTH_ENV}")
    if parts.query or parts.fragment:
        raise ValueError(f"{shown}: a DICOMweb URL has no query or fragment (use --query; "
                         f"credentials go in a file)")
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
            def get_redirect_target(self, response):
                # Only a GET, only within the origin: a STOW-RS POST redirected would send
                # patient data wherever the answer points, perhaps from HTTPS to HTTP.
                target = super().get_redirect_target(response)
                if target is None:
                    return None
                from urllib.parse import urljoin
                if response.request.method != "GET" or \
                        _origin(urljoin(response.url, target)) != _origin(response.url):
                    raise Redirected(response.status_code)
                return target

            def merge_environment_settings(self, *args):
                # A CA named here wins over REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE, which requests
                # otherwise prefers to a session's own; proxies still come from the environment.
                settings = super().merge_environment_settings(*args)
                if ca:
                    settings["verify"] = ca
                return settings

        session = Session()
        session.hooks["response"].extend([_bounded, _plain_media_type])
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
    """An HTTP answer past a bound: its bytes, its parts or its time."""


class Redirected(Exception):
    """An answer redirected a request that is not followed (not a GET, or another origin)."""

    def __init__(self, status):
        super().__init__(f"answered HTTP {status} {_phrase(status)}, a redirect not followed")
        self.status = status


def _origin(url):
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


def _media_type(response):
    return response.headers.get("Content-Type", "").split(";")[0].strip().lower()


def _plain_media_type(response, *args, **kwargs):
    """A response hook: the media type without its parameters (``application/dicom+json;
    charset=utf-8``), which dicomweb-client compares whole (it ignored such an answer)."""
    kind = _media_type(response)
    if kind.endswith("json") or kind.endswith("xml"):
        response.headers["Content-Type"] = kind
    return response


def _bounded(response, *args, **kwargs):
    """A response hook (it runs before the body is read), so that a server cannot choose how
    much memory or time a request takes: an answer larger than its bound (MAX_JSON_BYTES for
    JSON, else MAX_ANSWER_BYTES) is refused by its declared length, or cut where it passes it;
    one with more than MAX_PARTS multipart parts is cut at the next; one still arriving
    ANSWER_DEADLINE seconds after its body began is cut."""
    limit = MAX_JSON_BYTES if _media_type(response).endswith("json") else MAX_ANSWER_BYTES
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        response.close()
        raise TooLarge(f"an answer of {int(declared) >> 20} MiB")
    boundary, stream = _boundary(response), response.raw.stream
    late = f"an answer still arriving after {ANSWER_DEADLINE:g} s"

    def counted(*a, **k):
        total, parts, tail = 0, 0, b""
        # A read blocks until its whole chunk arrives: only a timer cuts a trickle inside one.
        fired = threading.Event()  # set before the cut, so no read can end unnoticed
        timer = threading.Timer(ANSWER_DEADLINE, _cut, (response, fired))
        timer.daemon = True
        timer.start()
        try:
            for chunk in stream(*a, **k):
                if fired.is_set():
                    raise TooLarge(late)
                total += len(chunk)
                why = f"an answer past {limit >> 20} MiB" if total > limit else None
                if boundary:
                    seen = tail + chunk
                    parts += seen.count(boundary)
                    tail = seen[-len(boundary) + 1:]
                    if parts > MAX_PARTS + 1:  # the closing delimiter counts once more
                        why = f"an answer of more than {MAX_PARTS} parts"
                if why:
                    response.close()
                    raise TooLarge(why)
                yield chunk
            if fired.is_set():  # cut by the timer: what came is not the answer
                raise TooLarge(late)
        except TooLarge:
            raise
        except Exception:
            if fired.is_set():  # the read failed because the timer cut it
                raise TooLarge(late) from None
            raise
        finally:
            timer.cancel()
    response.raw.stream = counted
    return response


def _cut(response, fired):
    """End a response's connection from another thread: a blocked read returns at once."""
    import socket
    fired.set()
    # urllib3 hands the socket to http.client's response: its buffered reader's raw SocketIO
    fp = getattr(getattr(response.raw, "_fp", None), "fp", None)
    sock = getattr(getattr(fp, "raw", None), "_sock", None)
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _boundary(response):
    """The delimiter of a multipart answer's parts (``\r\n--BOUNDARY``), or None."""
    header = response.headers.get("Content-Type", "")
    if not header.lower().startswith("multipart/"):
        return None
    for param in header.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary" and value.strip('"'):
            return b"--" + value.strip('"').encode("latin-1")
    return None


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
    listed = 0
    for study in studies:
        found = _paged(lambda limit, offset: client.search_for_instances(
            study_instance_uid=study, series_instance_uid=address.series, limit=limit,
            offset=offset, fields=["SOPClassUID", "SeriesInstanceUID", "SeriesDescription"]),
            lambda i: _value(i, "00080018"))
        rows = []
        for i in found:
            listed += 1
            if listed > MAX_INSTANCES:
                raise TooLarge(f"a listing of more than {MAX_INSTANCES:,} instances")
            rows.append((_value(i, "0020000E") or "", _value(i, "00080018") or "",
                         _value(i, "00080016") or "", _value(i, "0008103E") or ""))
        for series, instance, sop_class, description in sorted(rows):
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
    found = _paged(lambda limit, offset: client.search_for_studies(
        search_filters=dict(query), limit=limit, offset=offset, fields=["StudyInstanceUID"]),
        lambda s: _value(s, "0020000D"))
    for study in found:
        yield _value(study, "0020000D")


def _paged(search, key):
    """The rows of a QIDO-RS search, a page at a time (``search(limit, offset)``), until a
    short page. TooLarge after MAX_PAGES pages, or as soon as a page brings no row not seen
    before (a server that ignores the offset, or a redirect that drops the query, would
    otherwise page for ever)."""
    seen, offset = set(), 0
    for _ in range(MAX_PAGES):
        page = search(PAGE, offset)
        new = [row for row in page if key(row) not in seen]
        if page and not new:
            raise TooLarge("a listing whose pages repeat (the server ignores the offset)")
        seen.update(key(row) for row in new)
        yield from new
        if len(page) < PAGE:
            return
        offset += len(page)
    raise TooLarge(f"a listing of more than {MAX_PAGES} pages")


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
    except Exception as e:  # unreachable, or an answer that is no DICOM (pydicom's errors)
        raise InputError(url, f"not retrieved: {type(e).__name__}") from None
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
