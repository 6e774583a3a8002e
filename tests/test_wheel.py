"""The release path, run here: ``python -m build`` writes an sdist and a wheel, ``auditwheel
repair`` makes the wheel manylinux, and the repaired wheel installs into a fresh virtual
environment with no compiler reachable, where ``xray-infer classify`` and
``tests/test_installed.py`` run against it. Needs the package registry (the wheel's
dependencies) and, for the build, a compiler here."""
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from helpers import ROOT

pytestmark = pytest.mark.slow


def _run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)
    assert r.returncode == 0, f"{cmd}: {r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    if not sys.platform.startswith("linux") or shutil.which("auditwheel") is None:
        pytest.skip("auditwheel (the dev extra) on Linux is needed to repair the wheel")
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", out, ROOT])
    wheel = next(out.glob("xray_infer-*.whl"))
    repaired = out / "repaired"
    _run(["auditwheel", "repair", "--wheel-dir", repaired, wheel])
    return next(out.glob("xray_infer-*.tar.gz")), next(repaired.glob("*.whl"))


def test_sdist_carries_the_kernel_source_models_and_samples(dist):
    sdist, _ = dist
    names = tarfile.open(sdist).getnames()
    for part in ("ext/_preprocess.pyx", "xray_infer/models/default.onnx",
                 "xray_infer/models/default.int8.onnx", "xray_infer/samples/ATTRIBUTION.md",
                 "CHANGELOG.md", "LICENSE"):
        assert any(n.endswith(part) for n in names), part


def test_wheel_is_manylinux_and_the_library_only(dist):
    _, wheel = dist
    assert "manylinux" in wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert not tops & {"trainer", "benchmarks", "tests", "ext"}
    assert any(n.startswith("xray_infer/_preprocess.") and n.endswith(".so") for n in names)
    assert not any(n.endswith((".pyx", ".c")) for n in names)
    print(f"\n{wheel.name}: {wheel.stat().st_size / 1e6:.1f} MB")


def test_wheel_installs_and_classifies_with_no_compiler(dist, tmp_path):
    _, wheel = dist
    env_dir = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", env_dir])
    py = env_dir / "bin" / "python"
    # No compiler reachable: only the new environment's bin and the basic system tools, and
    # every compiler variable pointing at /bin/false. A source build would fail here.
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("sh", "env", "uname", "ls", "cat"):
        found = shutil.which(tool)
        if found:
            os.symlink(found, bare / tool)
    env = {"PATH": f"{env_dir / 'bin'}:{bare}", "HOME": str(tmp_path), "CC": "/bin/false",
           "CXX": "/bin/false", "LDSHARED": "/bin/false", "LANG": "C.UTF-8",
           "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR",
                                           str(Path.home() / ".cache" / "pip"))}
    for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"):
        if key in os.environ:
            env[key] = os.environ[key]
    assert subprocess.run(["sh", "-c", "command -v gcc || command -v cc"], env=env,
                          capture_output=True, timeout=60).returncode != 0
    _run([py, "-m", "pip", "install", "-q", "--only-binary", ":all:", wheel, "pytest>=8"],
         env=env, cwd=tmp_path)
    r = _run([py, "-c", "import xray_infer, pathlib; "
                        "print(pathlib.Path(xray_infer.__file__).parent)"], env=env, cwd=tmp_path)
    installed = Path(r.stdout.strip())
    assert env_dir in installed.parents  # the wheel's copy, not this source tree
    _run([env_dir / "bin" / "xray-infer", "classify", installed / "samples", "-q", "-o",
          tmp_path / "r.csv"], env=env, cwd=tmp_path)
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 7
    shutil.copy(ROOT / "tests" / "test_installed.py", tmp_path / "test_installed.py")
    _run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", tmp_path,
          tmp_path / "test_installed.py"], env=env, cwd=tmp_path)
