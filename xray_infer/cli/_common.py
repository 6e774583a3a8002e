"""What the subcommands share: exit statuses, argument value checks, the one logging set-up
and the one "this needs an extra" check."""
import argparse
import importlib
import logging
import os
import sys
import tempfile

from ..errors import UsageError
from ..inputs import is_uri

EXIT_OK, EXIT_INPUT_FAILED, EXIT_USAGE, EXIT_JOB_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: Every input scored, but a result (heatmap, DICOM SR/SC) did not reach its destination;
#: with failed inputs too, the two add up (1 + 4 = 5). docs/cli.md has the table.
EXIT_UNDELIVERED = 4
#: A closed standard output (``| head``): the status of a tool ended by SIGPIPE, as others end.
EXIT_PIPE_CLOSED = 141
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Libraries whose messages quote values from the objects they read (patient data).
CHATTY = ("pydicom", "highdicom", "pynetdicom", "dicomweb_client", "py.warnings")


def checked(parse):
    """An argparse ``type=`` from a parser that raises ValueError with the reason."""
    def check(text):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    check.__name__ = parse.__name__  # argparse names the option's type in its messages
    return check


def _whole_number(text):
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _port_number(text):
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{text!r} is not a port (1 to 65535)")
    return int(text)


def _readable(text):
    if not os.path.isfile(text) or not os.access(text, os.R_OK):
        raise ValueError(f"{text}: not a readable file")
    return text


whole, port, readable_file = map(checked, (_whole_number, _port_number, _readable))


def _probe(option, path, folder):
    """UsageError unless a file can be created in ``folder`` (a real try: permissions, a
    read-only or full filesystem, root or not)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UsageError(f"{option} {path}: cannot write in {folder}: {e.strerror or e}") \
            from None


def check_writable_file(option, path):
    """UsageError unless ``path`` is a local file this run can write: not a URL, not a
    folder, in an existing folder where files can be created."""
    if is_uri(path):
        raise UsageError(f"{option} {path}: a local file is expected, not a URL")
    if os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a directory")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path}: the folder {folder} does not exist")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path}: not writable")
    _probe(option, path, folder)


def check_writable_folder(option, path):
    """UsageError unless ``path`` is a local folder this run can write into (created when it
    does not exist: its nearest existing parent must then be a writable folder)."""
    if is_uri(path):
        raise UsageError(f"{option} {path}: a local folder is expected, not a URL")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{option} {path}: exists and is not a directory")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"{option} {path}: {parent} is a file, so the folder cannot be made")
    _probe(option, path, parent)


def check_scope_options(args):
    """``--scope`` and ``--ages`` together (classify and listen take both)."""
    if args.ages is not None and args.scope == "off":
        raise UsageError("--ages widens the scope gate; with --scope off nothing is gated")


def require(modules, what, extra):
    """UsageError naming ``what`` and the extra to install, unless ``modules`` import."""
    try:
        for name in modules:
            importlib.import_module(name)
    except ImportError:
        raise UsageError(f"{what} needs {', '.join(modules)}: {install_hint(extra)}") from None


def install_hint(extra):
    """How to add an optional extra (``"xray-infer[dicom]"``): the package is installed from
    its source folder, not from a package index."""
    if "[" not in extra:  # a plain package
        return f"pip install {extra}"
    name = extra.split("[", 1)[1].rstrip("]")
    return f"install the {name} extra (pip install -e '.[{name}]' in the source folder)"


class WarningCount(logging.Handler):
    """Counts library warnings (for the summary line) wherever they are written."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        self.count += 1


def setup_logging(path, *, console, verbose=False):
    """Warnings captured into logging; ``path`` gets every line at INFO and above, created
    with its first line (so a run that stops at a usage error leaves no file); ``console``
    also writes them to stderr (the node), else nothing reaches the terminal between the
    progress lines (classify). Returns the WarningCount.

    With ``console``, the libraries in CHATTY are silenced unless ``verbose``: they quote
    values from the objects (patient data) in their messages."""
    logging.captureWarnings(True)
    root = logging.getLogger()
    count = WarningCount()
    root.addHandler(count)
    handlers = [logging.StreamHandler(sys.stderr)] if console else []
    if path:
        handlers.append(logging.FileHandler(path, encoding="utf-8", errors="backslashreplace",
                                            delay=True))
    for h in handlers:
        h.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(h)
    if handlers:
        root.setLevel(logging.INFO)
    if console:
        for name in CHATTY:
            logging.getLogger(name).setLevel(logging.WARNING if verbose else logging.CRITICAL)
    return count


def quiet_opencv():
    """OpenCV logs its own messages for every corrupt file; the CLI reports each failure itself."""
    import cv2
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # builds without the logging bindings
        pass


def fail(message, code):
    print(f"xray-infer: {message}", file=sys.stderr)
    return code


def check_resolves(host, option):
    """UsageError where ``host`` does not resolve: a node that starts anyway would only ever
    spool, or audit into the void (a typo, or the README's placeholder)."""
    import socket
    if host is None:
        return
    try:
        socket.getaddrinfo(host, None)
    except (OSError, UnicodeError) as e:
        raise UsageError(f"{option}: the host {host!r} does not resolve "
                         f"({getattr(e, 'strerror', None) or e})") from None
