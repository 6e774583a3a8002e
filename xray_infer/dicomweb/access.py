"""How a DICOMweb server is reached: its URL checked, the credentials (from a file or the
environment, never the command line, never logged), TLS, and the bounds every answer is read
under (bytes, multipart parts counted before anything parses them, time from its first byte;
redirects followed only for GET within the origin)."""
import base64
import os
import threading
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

from ..destinations import WEB
from ..errors import XrayInferError

AUTH_ENV = "XRAY_INFER_DICOMWEB_AUTH"
#: The largest HTTP answer read (an instance retrieved, a listing): a file's bound, as
#: ``decode.MAX_FILE_BYTES``; a multipart wrapping adds little.
MAX_ANSWER_BYTES = (512 << 20) + (1 << 20)
#: A DICOM JSON answer (a QIDO-RS listing, a STOW-RS answer) larger than this is refused: JSON
#: takes several times its size in memory once parsed.
MAX_JSON_BYTES = 32 << 20
#: Parts in one multipart answer (an instance retrieved is one): counted as they arrive.
MAX_PARTS = 16
#: Seconds from the first byte of an answer to its last (``destinations.WEB``).
ANSWER_DEADLINE = WEB.answer_deadline


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
    timeout: float = WEB.timeout

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


class TooLarge(XrayInferError):
    """An HTTP answer past a bound: its bytes, its parts or its time."""


class Redirected(XrayInferError):
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
    if _STOPPING.is_set():
        response.close()
        raise TooLarge(STOPPED)

    def counted(*a, **k):
        total, parts, tail = 0, 0, b""
        # A read blocks until its whole chunk arrives: only a timer cuts a trickle inside one.
        fired = threading.Event()  # set before the cut, so no read can end unnoticed
        timer = threading.Timer(ANSWER_DEADLINE, _cut, (response, fired))
        timer.daemon = True
        timer.start()
        with _LOCK:
            _ACTIVE[id(response)] = (response, fired)
        try:
            if _STOPPING.is_set():  # stopped between the hook and the first read
                raise TooLarge(STOPPED)
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
            if fired.is_set():  # cut by the timer (or a stop): what came is not the answer
                raise TooLarge(STOPPED if _STOPPING.is_set() else late)
        except TooLarge:
            raise
        except Exception:
            if _STOPPING.is_set():
                raise TooLarge(STOPPED) from None
            if fired.is_set():  # the read failed because the timer cut it
                raise TooLarge(late) from None
            raise
        finally:
            timer.cancel()
            with _LOCK:
                _ACTIVE.pop(id(response), None)
    response.raw.stream = counted
    return response


#: Answers being read now, so that ``stop_all`` can cut them (Ctrl-C: a read that blocks in
#: a worker thread would otherwise hold the process until its deadline).
_ACTIVE, _LOCK, _STOPPING = {}, threading.Lock(), threading.Event()
STOPPED = "an answer cut: the run is stopping"


def stop_all():
    """Cut every answer being read, and refuse new ones: the process is stopping."""
    _STOPPING.set()
    with _LOCK:
        active = list(_ACTIVE.values())
    for response, fired in active:
        _cut(response, fired)


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


def _phrase(code):
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return ""


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
