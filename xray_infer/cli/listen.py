"""``xray-infer listen``: the DICOM node (receive radiographs, classify them, forward the
results)."""
import logging
import os
import signal
import threading

from ..errors import UsageError, XrayInferError
from ..node.policy import DEFAULT_AE_TITLE, DEFAULT_HOST, Allowlist, Limits
from ..spec import CPU_BATCH_SIZE, DEFAULT_BATCH_SIZE
from ._common import (EXIT_OK, EXIT_USAGE, check_resolves, check_scope_options, fail, port,
                      quiet_opencv, require, setup_logging, whole)
from . import dicomweb_options
from .audit_options import add_audit_options, audit_trail
from .classify import ages
from .dicom_options import NETWORKING, add_tls_options, ae_title, caller, tls_from

log = logging.getLogger("xray_infer.cli")


def _listen_plan(args):
    """Everything ``listen`` needs, checked before the model loads (UsageError otherwise)."""
    from ..node.spool import Spool
    if not args.allow and not args.allow_any:
        raise UsageError("say who may send: --allow AET@HOST (repeatable), or --allow-any to "
                         "admit every peer that can reach the port")
    if args.allow and args.allow_any:
        raise UsageError("--allow and --allow-any contradict each other")
    if args.model and not os.path.isfile(args.model):
        raise UsageError(f"--model {args.model}: no such file")
    check_scope_options(args)
    allow = Allowlist(tuple(args.allow or ()), any=args.allow_any)
    try:
        allow = allow.resolved()
    except ValueError as e:
        raise UsageError(str(e)) from None
    limits = Limits(max_associations=args.max_associations, max_per_peer=args.max_per_peer,
                    max_pending=args.max_pending, max_object_mb=args.max_object_mb,
                    max_inflight_mb=args.max_inflight_mb, min_free_mb=args.min_free_mb,
                    max_refusals=args.max_refusals, network_timeout=args.idle_timeout,
                    setup_timeout=args.setup_timeout, stall_seconds=args.stall_timeout)
    if limits.max_inflight_mb < limits.max_object_mb:
        raise UsageError(f"--max-inflight-mb {limits.max_inflight_mb} is below --max-object-mb "
                         f"{limits.max_object_mb}: no object could ever be received")
    try:
        Spool(args.spool, limits.min_free_mb * 2 ** 20).check_writable()
    except OSError as e:
        raise UsageError(f"--spool {args.spool}: not usable: {e}") from None
    check_resolves(_forward_host(args.forward), "--forward")
    if isinstance(args.forward, str):  # a DICOMweb base URL: HTTPS, the CA alone may do
        forward = dicomweb_options.access(args.forward_auth, args.forward_tls_ca,
                                          args.forward_tls_cert, args.forward_tls_key,
                                          "--forward-tls-*, --forward-auth")
    elif args.forward_auth:
        raise UsageError("--forward-auth: the credentials of a DICOMweb --forward URL; "
                         f"{args.forward} is a DICOM peer")
    else:
        forward = tls_from(args, "forward_", server=False)
    return (allow, limits, tls_from(args, "", server=True), forward,
            audit_trail(args, args.ae_title), _tls_clients(args))


def _tls_clients(args):
    """What a client's certificate must be (``network.ClientCertificates``), or None."""
    if not args.tls_ca:
        if args.tls_client_pin or args.tls_client_chain != "direct":
            raise UsageError("--tls-client-*: the node speaks no TLS (--tls-cert/key/ca)")
        return None
    from ..node.network import ClientCertificates
    for pin in args.tls_client_pin or ():
        if len(pin.replace(":", "")) != 64 or any(c not in "0123456789abcdefABCDEF:"
                                                  for c in pin):
            raise UsageError(f"--tls-client-pin {pin}: not a SHA-256 fingerprint (64 hex "
                             f"digits, colons allowed)")
    try:
        return ClientCertificates(args.tls_ca, direct=args.tls_client_chain == "direct",
                                  pins=args.tls_client_pin or ())
    except (OSError, ValueError) as e:
        raise UsageError(f"--tls-ca {args.tls_ca}: {e}") from None


def _forward_host(forward):
    """The host a ``--forward`` destination names; None for a URL a proxy will resolve."""
    from urllib.parse import urlsplit
    from urllib.request import getproxies
    if not isinstance(forward, str):
        return forward.host
    return None if urlsplit(forward).scheme in getproxies() else urlsplit(forward).hostname


def cmd_listen(args):
    require(NETWORKING, "DICOM networking", "xray-infer[dicom]")
    allow, limits, tls, forward_tls, audit, tls_clients = _listen_plan(args)
    setup_logging(args.log, console=True, verbose=args.verbose)
    quiet_opencv()
    from ..node import Node
    try:
        node = Node(args.port, args.forward, args.spool, allow, ae_title=args.ae_title,
                    host=args.host, batch_size=args.batch_size, model=args.model, limits=limits,
                    tls=tls, forward_tls=forward_tls, metrics_port=args.metrics_port,
                    metrics_host=args.metrics_host, scope=args.scope, ages=args.ages,
                    audit=audit, tls_clients=tls_clients)
    except XrayInferError as e:
        return fail(e, EXIT_USAGE)
    stopping = []

    def stop(signum, _frame):
        if not stopping:
            stopping.append(signum)
            log.info("signal %d: stopping", signum)
            threading.Thread(target=node.stop, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        node.start()
    except OSError as e:
        node.stop()
        return fail(f"cannot listen on {args.host}:{args.port}: {e}", EXIT_USAGE)
    node.wait()
    return EXIT_OK


def add_parser(subparsers):
    d = Limits()
    li = subparsers.add_parser("listen", help="a DICOM node: receive radiographs, classify them, "
                                       "forward SR + Secondary Capture results",
                        description="Only callers named with --allow may associate. See "
                                    "docs/node.md, 'Deploying the node'.")
    g_net = li.add_argument_group("network")
    g_who = li.add_argument_group("callers")
    g_dest = li.add_argument_group("results: where they go")
    g_score = li.add_argument_group("scoring")
    g_lim = li.add_argument_group("limits (docs/node.md: what each protects)")
    g_mon = li.add_argument_group("metrics and health")
    g_tls = li.add_argument_group("DICOM TLS")
    g_scope = li.add_argument_group("scope gate")
    g_log = li.add_argument_group("logging")
    g_net.add_argument("--port", type=port, required=True,
                    help="the DICOM port to listen on (104 and 11112 are usual)")
    g_net.add_argument("--host", default=DEFAULT_HOST,
                    help=f"interface to listen on (default {DEFAULT_HOST}; 0.0.0.0 for all)")
    g_net.add_argument("--ae-title", type=ae_title, default=DEFAULT_AE_TITLE,
                    help=f"this node's AE title; a caller must call it by this name (default "
                         f"{DEFAULT_AE_TITLE})")
    g_who.add_argument("--allow", action="append", type=caller, metavar="AET@HOST",
                    help="a caller that may associate (repeatable); HOST an address or name")
    g_who.add_argument("--allow-any", action="store_true",
                    help="admit any caller that can reach the port (logged as a warning)")
    g_dest.add_argument("--forward", required=True, type=dicomweb_options.destination,
                    metavar="HOST:PORT[:AET]|URL",
                    help="where the results go: a PACS by C-STORE, or a DICOMweb base URL "
                         "(http:// or https://) by STOW-RS")
    g_dest.add_argument("--spool", default="xray-infer-spool",
                    help="received instances wait here until their results are delivered "
                         "(default: %(default)s in the current folder)")
    g_score.add_argument("--batch-size", type=whole,
                    help=f"instances classified together (default: {CPU_BATCH_SIZE} on the CPU, "
                         f"{DEFAULT_BATCH_SIZE} on a GPU)")
    g_score.add_argument("--model", metavar="ONNX",
                    help="an exported model file (default: the bundled model)")
    g_lim.add_argument("--max-associations", type=whole, default=d.max_associations,
                    help=f"associations open at once, all callers (default {d.max_associations})")
    g_lim.add_argument("--max-per-peer", type=whole, default=d.max_per_peer,
                    help=f"connections open at once from one address (default {d.max_per_peer})")
    g_lim.add_argument("--max-pending", type=whole, default=d.max_pending,
                    help=f"connections not yet associated, all addresses together (default "
                         f"{d.max_pending}; {d.max_pending_per_peer} from one address)")
    g_lim.add_argument("--max-object-mb", type=whole, default=d.max_object_mb,
                    help=f"largest data set received, and declared image (default "
                         f"{d.max_object_mb})")
    g_lim.add_argument("--max-inflight-mb", type=whole, default=d.max_inflight_mb,
                    help=f"data sets being received at once, all associations together, in "
                         f"units of --max-object-mb; beyond it a peer waits (default "
                         f"{d.max_inflight_mb})")
    g_lim.add_argument("--min-free-mb", type=int, default=d.min_free_mb,
                    help=f"disk space kept free in the spool; below it instances are refused "
                         f"as retryable (default {d.min_free_mb})")
    g_lim.add_argument("--max-refusals", type=whole, default=d.max_refusals,
                    help=f"times the destination may refuse an instance's results before it is "
                         f"quarantined in the spool's failed/ (default {d.max_refusals})")
    g_lim.add_argument("--idle-timeout", type=whole, default=int(d.network_timeout),
                    help=f"seconds an association has to complete each message, counted from "
                         f"the last one (default {d.network_timeout:g})")
    g_lim.add_argument("--setup-timeout", type=whole, default=int(d.setup_timeout),
                    help=f"seconds a connection has to associate, TLS handshake included "
                         f"(default {d.setup_timeout:g})")
    g_lim.add_argument("--stall-timeout", type=whole, default=int(d.stall_seconds),
                    help=f"/healthz says 503 when instances wait and none has moved on for "
                         f"this many seconds (default {d.stall_seconds:g})")
    g_mon.add_argument("--metrics-port", type=port,
                    help="serve Prometheus /metrics and /healthz on this port")
    g_mon.add_argument("--metrics-host", default=DEFAULT_HOST,
                    help=f"interface the metrics listen on (default {DEFAULT_HOST}, whatever "
                         f"--host says)")
    add_tls_options(g_tls)
    g_tls.add_argument("--tls-client-chain", choices=("direct", "any"), default="direct",
                    help="direct: a client's certificate must be issued by a CA in --tls-ca "
                         "itself; any: any chain to it, intermediates included (default "
                         "%(default)s)")
    g_tls.add_argument("--tls-client-pin", action="append", metavar="SHA256",
                    help="accept only this client certificate (SHA-256 of its DER; openssl x509 "
                         "-noout -fingerprint -sha256), repeatable")
    add_tls_options(g_dest, "forward-", "the forward connection")
    dicomweb_options.add_options(g_dest, "forward-", "the DICOMweb --forward URL")
    g_scope.add_argument("--scope", choices=("on", "off"), default="on",
                    help="on: instances the model was not made for are acknowledged and nothing "
                         "is forwarded for them (logged, counted); off: every radiograph is "
                         "classified (default %(default)s)")
    g_scope.add_argument("--ages", type=ages, metavar="LOW-HIGH",
                    help="with --scope on: accepted patient ages in years (a range reaching "
                         "18 also turns the adult head off)")
    add_audit_options(li)
    g_log.add_argument("--log", metavar="FILE", help="also write the log here")
    g_log.add_argument("-v", "--verbose", action="store_true",
                    help="also log pydicom's, highdicom's and pynetdicom's messages (they may "
                         "quote values from the objects)")
    li.set_defaults(fn=cmd_listen)
