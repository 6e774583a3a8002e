"""The library stands without torch, and its kernel is the compiled one."""
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import xray_infer



def test_import_and_classify_without_torch():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any 'import torch' now fails\n"
        "import xray_infer, glob, os\n"
        "s = os.path.join(os.path.dirname(xray_infer.__file__), 'samples', '*.jpeg')\n"
        "r = xray_infer.classify(sorted(glob.glob(s)))\n"
        "assert len(r) == 6 and all(x.ok for x in r), r\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def test_bundled_files_are_package_data():
    pkg = Path(xray_infer.__file__).parent
    assert (pkg / "models" / "default.onnx").is_file()
    assert (pkg / "models" / "default.onnx.sha256").is_file()
    assert "CC BY 4.0" in (pkg / "samples" / "ATTRIBUTION.md").read_text()


def test_installed_metadata_pins_torch_to_the_cpu_build():
    """An unpinned torch would pull a multi-GB CUDA build; the core needs no torch at all."""
    requires = importlib.metadata.requires("xray-infer")
    torch = [r for r in requires if r.startswith("torch")]
    assert torch and all(r.startswith("torch==2.13.0") and 'extra == "train"' in r for r in torch)


def test_the_core_and_the_local_engine_stand_without_ray_and_pyarrow(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['ray'] = sys.modules['pyarrow'] = None  # any import of them now fails\n"
        "from xray_infer import cli\n"
        f"rc = cli.main(['classify', 'xray_infer/samples', '-q', '-o', r'{tmp_path}/r.csv'])\n"
        f"assert rc == 0 and len(open(r'{tmp_path}/r.csv').readlines()) == 7\n"
        f"assert cli.main(['classify', 'xray_infer/samples', '--engine', 'ray']) == 2\n"
        "print('ok')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(xray_infer.__file__).parent.parent)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
    assert "install the ray extra (pip install -e '.[ray]' in the source folder)" in p.stderr
    assert "xray-infer[" not in p.stderr  # no package of that name is published
    requires = importlib.metadata.requires("xray-infer")
    ray = [r for r in requires if r.startswith("ray")]
    assert ray and all('extra == "ray"' in r for r in ray)  # an extra, never a core dependency
