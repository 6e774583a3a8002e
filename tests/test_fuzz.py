"""The coverage-guided fuzz target runs for a bounded time without a finding."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

ROOT = Path(__file__).resolve().parent.parent
SECONDS = int(os.environ.get("FUZZ_SECONDS", "60"))


def test_fuzz_decode_and_preprocess(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "fuzz" / "fuzz_decode.py"), str(tmp_path),
                        str(ROOT / "fuzz" / "corpus"), f"-max_total_time={SECONDS}",
                        "-rss_limit_mb=3072", f"-artifact_prefix={tmp_path}/",
                        "-print_final_stats=1"],
                       capture_output=True, text=True, timeout=SECONDS + 120)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "Done" in p.stderr
