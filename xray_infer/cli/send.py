"""``xray-infer send``: C-STORE files to a DICOM peer."""
import sys

from ..errors import UsageError
from ..inputs import collect_inputs
from ..node.policy import DEFAULT_AE_TITLE
from ._common import EXIT_INPUT_FAILED, EXIT_OK, fail, require
from .dicom_options import NETWORKING, add_tls_options, ae_title, peer, tls_from


def cmd_send(args):
    require(NETWORKING, "DICOM networking", "xray-infer[dicom]")
    # folders by content too: archives often name instances by their UID alone
    files = collect_inputs(args.paths, args.recursive).files
    if not files:
        raise UsageError(f"no files to send: {', '.join(map(str, args.paths))} "
                         f"{'holds' if len(args.paths) == 1 else 'hold'} no DICOM files")
    tls = tls_from(args, "", server=False)
    from ..node import AssociationError, send
    report = (lambda line: None) if args.quiet else print
    try:
        outcome = send(files, args.to, ae_title=args.ae_title, report=report, tls=tls)
    except AssociationError as e:
        return fail(e, EXIT_INPUT_FAILED)
    refused = [p for p, v in outcome.items() if not isinstance(v, int)]
    if not args.quiet:
        print(f"xray-infer: {len(outcome) - len(refused)} stored, {len(refused)} not stored, "
              f"to {args.to}", file=sys.stderr)
    return EXIT_INPUT_FAILED if refused else EXIT_OK


def add_parser(subparsers):
    n = subparsers.add_parser("send", help="send DICOM files to a DICOM node or PACS (C-STORE)")
    n.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files and folders")
    n.add_argument("--to", required=True, type=peer, metavar="HOST:PORT[:AET]",
                   help="the receiving node or PACS, and the AE title it answers to (default "
                        "ANY-SCP)")
    n.add_argument("--ae-title", type=ae_title, default=DEFAULT_AE_TITLE,
                   help=f"this sender's AE title, as the receiver's allowlist names it "
                        f"(default {DEFAULT_AE_TITLE})")
    n.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders")
    n.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    add_tls_options(n)
    n.set_defaults(fn=cmd_send)
