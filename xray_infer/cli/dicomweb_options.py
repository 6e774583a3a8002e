"""The DICOMweb options ``classify`` and ``listen`` share: where credentials and certificates
come from, checked before anything loads, and the value types of the URLs."""
import threading
from collections import OrderedDict
from urllib.parse import parse_qsl

from ..dicomweb import AUTH_ENV, Access, check_url, is_dicomweb
from ..errors import UsageError
from ..peer import Peer
from ._common import checked, readable_file, require

DICOMWEB = ("dicomweb_client",)


def _query(text):
    pairs = parse_qsl(text, keep_blank_values=False, strict_parsing=True) if text else []
    if not pairs:
        raise ValueError(f"{text!r} is not KEY=VALUE[&KEY=VALUE...]")
    return dict(pairs)


def _destination(text):
    """A DICOMweb base URL (``http://`` or ``https://``), else a DICOM peer HOST:PORT[:AET]."""
    return check_url(text) if is_dicomweb(text) else Peer.parse(text)


def _folder_or_url(text):
    return check_url(text) if is_dicomweb(text) else text


query, destination, folder_or_url = map(checked, (_query, _destination, _folder_or_url))


def add_options(parser, prefix, what):
    """--{prefix}auth, -ca, -cert, -key: TLS and credentials of the DICOMweb server(s)."""
    flag = f"--{prefix}"
    parser.add_argument(flag + "auth", type=readable_file, metavar="FILE",
                        help=f"{what}: a file holding one line, 'bearer TOKEN' or 'basic "
                             f"USER:PASSWORD' (default: the {AUTH_ENV} environment variable; "
                             f"never on the command line)")
    if prefix == "dicomweb-":  # listen shares --forward-tls-* with its DICOM TLS forward
        parser.add_argument(flag + "ca", type=readable_file, metavar="FILE",
                            help=f"{what}: the CA its HTTPS certificate must be signed by "
                                 f"(default: the system's)")
        parser.add_argument(flag + "cert", type=readable_file, metavar="FILE",
                            help=f"{what}: this client's certificate (PEM), with --{prefix}key")
        parser.add_argument(flag + "key", type=readable_file, metavar="FILE",
                            help=f"{what}: this client's private key (PEM)")


def access(auth, ca=None, cert=None, key=None, options="--dicomweb-*"):
    """The checked Access, or UsageError; the message names where credentials came from,
    never what they hold."""
    require(DICOMWEB, "DICOMweb", "xray-infer[dicomweb]")
    a = Access(ca=ca, cert=cert, key=key, auth_file=auth)
    try:
        a.check()
    except ValueError as e:
        raise UsageError(f"{options}: {e}") from None
    return a


#: The most bytes of retrieved instances a run keeps for its heatmaps and DICOM results.
KEEP_BYTES = 256 << 20


class Remote:
    """A run's DICOMweb servers, reached with one Access: listing inputs (QIDO-RS), reading
    them (WADO-RS), one client per base URL. ``keep``: each instance's bytes are kept, up to
    KEEP_BYTES in all, until its side outputs take them (``fetch_again``): they are drawn from
    the bytes that were scored, without a second retrieval."""

    def __init__(self, access, query=None, keep=False):
        self.access, self.query, self.clients = access, query, {}
        self.keep, self._kept, self._lock = keep, OrderedDict(), threading.Lock()

    def client(self, base):
        if base not in self.clients:
            self.clients[base] = self.access.client(base)
        return self.clients[base]

    def instances(self, url, skipped):
        """The instance URLs ``url`` names (a study, series or instance; the base with
        ``query``), listed a page at a time as they are taken; UsageError as soon as they
        cannot be listed."""
        import requests

        from ..dicomweb import Address, TooLarge, list_instances
        address = Address.parse(url)
        listing = list_instances(self.client(address.base), address, self.query, skipped)
        while True:
            try:
                instance = next(listing)
            except StopIteration:
                return
            except requests.HTTPError as e:
                raise UsageError(f"{url}: cannot list: HTTP {e.response.status_code}") from None
            except TooLarge as e:
                raise UsageError(f"{url}: cannot list: {e}") from None
            except (requests.RequestException, ValueError, KeyError) as e:  # unreachable, garbled
                raise UsageError(f"{url}: cannot list: {type(e).__name__}") from None
            yield instance

    def _retrieve(self, url):
        from ..dicomweb import Address, retrieve
        return retrieve(self.client(Address.parse(url).base), url)

    def fetch(self, url):
        """The instance at ``url`` (retrieved; kept where ``keep``), or InputError."""
        data = self._retrieve(url)
        if self.keep and len(data) <= KEEP_BYTES:
            with self._lock:  # workers fetch concurrently; the oldest kept go first
                self._kept[url] = data
                while sum(map(len, self._kept.values())) > KEEP_BYTES:
                    self._kept.popitem(last=False)
        return data

    def fetch_again(self, url):
        """The bytes ``fetch`` returned for ``url`` where still kept (then no longer kept),
        else retrieved again, and not kept: keeping them could only push out bytes a later
        row still needs."""
        with self._lock:
            data = self._kept.pop(url, None)
        return data if data is not None else self._retrieve(url)

    def forget(self, url):
        """``url``'s row is written: its bytes are not needed any more."""
        with self._lock:
            self._kept.pop(url, None)


def check_run(args):
    """The DICOMweb side of a classify run, checked: the Remote its inputs and outputs use, or
    None when it has none."""
    from ..dicomweb import Address
    urls = [p for p in args.paths if is_dicomweb(p)]
    out = bool(args.dicom_out) and is_dicomweb(args.dicom_out)
    given = [f"--{o}" for o in ("dicomweb-auth", "dicomweb-ca", "dicomweb-cert", "dicomweb-key")
             if getattr(args, o.replace("-", "_"))]
    if not urls and not out:
        if args.query:
            raise UsageError("--query searches a DICOMweb server: name its base URL as input")
        if given:
            raise UsageError(f"{given[0]}: no DICOMweb URL to use it for (an input, or "
                             f"--dicom-out URL)")
        return None
    if args.engine == "ray":
        raise UsageError("DICOMweb inputs and --dicom-out URL run on the local engine")
    for url in urls:
        try:
            address = Address.parse(url)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if address.study is None and not args.query:
            raise UsageError(f"{url}: a DICOMweb base URL: name a study or series under it, or "
                             f"search it with --query KEY=VALUE[&...]")
        if address.study is not None and args.query:
            raise UsageError(f"--query searches from a base URL; {url} names a study")
    return Remote(access(args.dicomweb_auth, args.dicomweb_ca, args.dicomweb_cert,
                         args.dicomweb_key), args.query,
                  keep=bool(urls) and bool(args.heatmaps or args.dicom_out))
