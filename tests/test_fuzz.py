"""The coverage-guided fuzz target runs for a bounded time without a finding."""
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

ROOT = Path(__file__).resolve().parent.parent
SECONDS = int(os.environ.get("FUZZ_SECONDS", "60"))
ADDRESS_SPACE = 8 << 30  # an allocation past this raises MemoryError, which the fuzzer reports


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


@pytest.mark.slow
def test_fuzz_decode_and_preprocess(tmp_path):
    # libFuzzer's own -rss_limit_mb reads the peak RSS, which a child inherits from this (large)
    # test process on Linux; the address-space limit bounds the fuzzer's memory instead.
    p = subprocess.run([sys.executable, str(ROOT / "fuzz" / "fuzz_decode.py"), str(tmp_path),
                        str(ROOT / "fuzz" / "corpus"), f"-max_total_time={SECONDS}",
                        "-rss_limit_mb=0", f"-artifact_prefix={tmp_path}/",
                        "-print_final_stats=1"],
                       capture_output=True, text=True, timeout=SECONDS + 120,
                       preexec_fn=_limit_memory)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "Done" in p.stderr
