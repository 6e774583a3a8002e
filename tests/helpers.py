"""What several test modules use: the sample scans shipped with the package, the command line
as a subprocess, and waiting for a condition (every wait in the tests is on an event: a port,
a log line, a file, a count; never a fixed time)."""
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Test-split scans shipped with the package (tests that need only these run without the data).
SAMPLE_DIR = ROOT / "xray_infer" / "samples"
SAMPLES = sorted(SAMPLE_DIR.glob("*.jpeg"))

#: The variants every numeric check runs under (the ``precision`` fixture), whatever this CPU's
#: ``precision="auto"`` would pick, so that a machine with int8 dot products and one without
#: reach the same verdicts.
PRECISIONS = ("float32", "int8")
#: How far the probabilities of one picture may move when it arrives another way (a DICOM of a
#: JPEG, 12 bits instead of 8, a window), per variant. float32 moves by the input's rounding
#: (0.0002 on the DICOM test); int8 re-quantises the activations, which amplifies that, and its
#: kernels differ between CPUs with and without int8 dot products (0.026 at most on the DICOM
#: test, measured on a CPU with AVX-512 VNNI).
PROBABILITY_TOLERANCE = {"float32": 0.02, "int8": 0.06}


def run_cli(*args, timeout=300, **kw):
    """``python -m xray_infer ARGS`` to completion, output captured as text."""
    return subprocess.run([sys.executable, "-m", "xray_infer", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, **kw)


def as_foreground():
    """A child's ``preexec_fn``: SIGINT as a terminal's foreground job has it, also when the
    suite runs as a background job (whose shell leaves SIGINT ignored, and children inherit
    that), so that an interrupt test sends the signal a user's Ctrl-C would."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port():
    """A TCP port free on loopback now (the tests' servers bind it at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=180, what="condition", interval=0.25):
    """Poll ``predicate`` until it is true; TimeoutError naming ``what`` after ``timeout``
    seconds (a bound for a broken run, not a speed the test expects)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met after {timeout} s")
        time.sleep(interval)
