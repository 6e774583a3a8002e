"""Command line: ``xray-infer classify PATH...``, ``send``, ``listen`` and ``info``, a module
each; ``_common`` holds what they all share, ``dicom_options`` what send and listen share.

Exit status: 0 when every input was classified or refused as out of scope, 1 when any input
failed (each failure is a row in the output and is summarised on stderr), 2 for usage errors
(reported before the model loads and before any output file is touched), 3 when a Ray job
failed as a whole (rows written until then are complete), 130 when interrupted.

Nothing heavy is imported until the arguments have been checked.
"""
import argparse
import sys

from ..errors import UsageError
from . import classify, info, listen, send
from ._common import EXIT_USAGE


def build_parser():
    p = argparse.ArgumentParser(prog="xray-infer", description="Classify pediatric chest X-rays "
                                "(normal / bacterial / viral pneumonia). Not a diagnostic device.")
    p.add_argument("--version", action="version", version=_version_line())
    subparsers = p.add_subparsers(dest="cmd", required=True)
    classify.add_parser(subparsers)
    send.add_parser(subparsers)
    listen.add_parser(subparsers)
    info.add_parser(subparsers)
    return p


def _version_line():
    """``xray-infer X.Y.Z``; the bundled model's own version is in ``xray-infer info``."""
    from .. import __version__
    return f"xray-infer {__version__}"


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UsageError as e:
        print(f"xray-infer: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `xray-infer info | head -3`: the reader had enough
        from .classify import pipe_closed
        return pipe_closed()


if __name__ == "__main__":
    sys.exit(main())
