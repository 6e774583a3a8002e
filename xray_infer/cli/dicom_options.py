"""What ``send`` and ``listen`` share: the networking extra, the value types of peers, AE titles
and callers, and the DICOM TLS options with the SSLContext they make."""
from ..errors import UsageError
from ..node.policy import Caller
from ..peer import Peer, check_ae_title
from ._common import checked, readable_file

NETWORKING = ("pynetdicom", "highdicom", "prometheus_client")
peer, ae_title, caller = map(checked, (Peer.parse, check_ae_title, Caller.parse))


def tls_from(args, prefix, server):
    """An SSLContext from --{prefix}cert/key/ca (all three or none), or None."""
    names = [f"{prefix}tls_{k}" for k in ("cert", "key", "ca")]
    values = [getattr(args, n) for n in names]
    if not any(values):
        return None
    flags = ["--" + n.replace("_", "-") for n in names]
    if not all(values):
        raise UsageError(f"TLS needs all of {', '.join(flags)}")
    import ssl
    from ..node.network import tls_context
    try:
        return tls_context(*values, server=server)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"{', '.join(flags)}: {e}") from None


def add_tls_options(parser, prefix="", what="this end"):
    flag = f"--{prefix}tls-"
    parser.add_argument(flag + "cert", type=readable_file, metavar="FILE",
                        help=f"TLS: {what}'s certificate (PEM); with the key and CA, DICOM TLS")
    parser.add_argument(flag + "key", type=readable_file, metavar="FILE",
                        help=f"TLS: {what}'s private key (PEM)")
    parser.add_argument(flag + "ca", type=readable_file, metavar="FILE",
                        help="TLS: the CA a peer's certificate must be signed by (PEM)")
