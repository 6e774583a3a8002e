"""A Ray cluster whose workers cannot import xray_infer (a node set up without the package):
``--engine ray`` says so in one line and exits 3, instead of Ray's tracebacks."""
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytestmark = pytest.mark.slow
from helpers import SAMPLE_DIR as SAMPLES, free_port, run_cli, wait_for  # noqa: E402


@pytest.fixture
def cluster_without_the_package():
    """A head node started from a virtual environment that sees this one's packages (Ray,
    NumPy, ...) but not xray_infer: its workers run that environment's Python."""
    # Ray's socket paths must stay short: a folder directly under /tmp
    root = Path(tempfile.mkdtemp(prefix="xr", dir="/tmp"))
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", env_dir], check=True,
                   timeout=120)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                                         "['purelib'])"], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()
    # a path line adds this environment's site-packages without running its .pth files,
    # so the editable install's import hook (or an installed xray_infer) is not there
    here = sysconfig.get_paths()["purelib"]
    (Path(site) / "host-packages.pth").write_text(here + "\n")
    check = subprocess.run([python, "-c", "import ray, xray_infer"], capture_output=True,
                           text=True, cwd=root, timeout=120)
    assert "No module named 'xray_infer'" in check.stderr
    port = free_port()
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    head = subprocess.Popen([python, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                             "--port", str(port), "--node-ip-address", "127.0.0.1",
                             "--num-cpus", "2", "--num-gpus", "0", "--temp-dir", root / "ray",
                             "--include-dashboard", "false", "--disable-usage-stats"],
                            cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # Up once the cluster reports the node's CPUs: the raylet registers after the GCS
        # listens, so an open port alone is not enough.
        def up():
            status = subprocess.run([python, "-m", "ray.scripts.scripts", "status", "--address",
                                     f"127.0.0.1:{port}"], capture_output=True, text=True,
                                    cwd=root, env=env, timeout=60)
            assert head.poll() is None, "ray start exited"
            return "/2.0 CPU" in status.stdout
        wait_for(up, 90, "the head node up", interval=0.5)
        yield f"127.0.0.1:{port}", root, env
    finally:
        _kill_group(head, signal.SIGTERM)  # the head and everything it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _kill_group(head, signal.SIGKILL)
            head.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def _kill_group(process, sig):
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:  # every process of the group has exited already
        pass


def test_workers_that_cannot_import_the_package_are_one_line_and_exit_3(
        cluster_without_the_package):
    address, root, env = cluster_without_the_package
    out, log = root / "rows.csv", root / "run.log"
    r = run_cli("classify", SAMPLES, "--engine", "ray", "--address", address, "-o", out, "--log",
                log, cwd=root, env=env)
    assert r.returncode == 3, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert "the Ray workers could not start: they cannot import xray_infer" in lines[0]
    assert "install xray-infer" in lines[0] and "rerun with --resume" in lines[0]
    assert out.read_text().splitlines() == ["path,label,p_normal,p_bacterial,p_viral,error,"
                                            "status,scope"]
    # Ray's own account, tracebacks included, is kept in the log rather than lost
    assert "ModuleNotFoundError: No module named 'xray_infer'" in log.read_text()
