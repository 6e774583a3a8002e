"""``--audit`` of ``listen`` and ``classify``: where the audit trail (``xray_infer.audit``)
goes, checked before anything starts."""
from urllib.parse import urlsplit

from .. import audit
from ..errors import UsageError
from ._common import check_resolves, checked


def audit_trail(args, user):
    """The AuditTrail ``--audit`` asks for (None without one), its destinations checked."""
    destinations = args.audit or []
    over_tls = any(d.startswith("tls://") for d in destinations)
    if (args.audit_tls_ca or args.audit_tls_cert or args.audit_tls_key) and not over_tls:
        raise UsageError("--audit-tls-*: no tls:// --audit destination to use them for")
    if not destinations:
        return None
    for dest in destinations:
        if "://" in dest:
            check_resolves(urlsplit(dest).hostname, "--audit")
    tls = None
    if over_tls:
        try:
            tls = audit.tls_context(args.audit_tls_ca, args.audit_tls_cert, args.audit_tls_key)
        except (OSError, ValueError) as e:
            raise UsageError(f"--audit-tls-*: {e}") from None
    return audit.AuditTrail(destinations, user, tls=tls)


def add_audit_options(parser):
    g = parser.add_argument_group("audit trail (IHE ATNA: DICOM audit messages over syslog)")
    g.add_argument("--audit", action="append", metavar="FILE|udp://|tcp://|tls://HOST:PORT",
                   type=checked(audit.check_destination),
                   help="write DICOM audit messages (RFC 5424 syslog) to this file, or send "
                        "them to this syslog collector (repeatable); docs/node.md")
    g.add_argument("--audit-tls-ca", metavar="PEM",
                   help="the CA a tls:// collector's certificate must be signed by (default: "
                        "the system's)")
    g.add_argument("--audit-tls-cert", metavar="PEM",
                   help="a client certificate for a tls:// collector that asks for one")
    g.add_argument("--audit-tls-key", metavar="PEM", help="its private key")
