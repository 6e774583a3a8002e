"""What several test modules use: the sample scans shipped with the package, and the command
line as a subprocess."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Test-split scans shipped with the package (tests that need only these run without the data).
SAMPLE_DIR = ROOT / "xray_infer" / "samples"
SAMPLES = sorted(SAMPLE_DIR.glob("*.jpeg"))


def run_cli(*args, timeout=300, **kw):
    """``python -m xray_infer ARGS`` to completion, output captured as text."""
    return subprocess.run([sys.executable, "-m", "xray_infer", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, **kw)
