"""What an installed xray-infer must do on its own: no source tree, no dataset, no compiler.
Run here against the development install, and by ``test_wheel.py`` and cibuildwheel against an
installed wheel (so this module imports nothing from the tests folder)."""
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import xray_infer


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "xray_infer", *args], capture_output=True,
                          text=True, timeout=300)


def test_version_is_the_distribution_metadata():
    version = importlib.metadata.version("xray-infer")
    assert xray_infer.__version__ == version
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"xray-infer {version}"


def test_bundled_models_samples_and_compiled_kernel():
    from xray_infer import _preprocess
    pkg = Path(xray_infer.__file__).parent
    for name in ("default.onnx", "default.fp16.onnx", "default.int8.onnx"):
        assert (pkg / "models" / name).is_file() and (pkg / "models" / f"{name}.sha256").is_file()
    assert len(list((pkg / "samples").glob("*.jpeg"))) == 6
    assert "CC BY 4.0" in (pkg / "samples" / "ATTRIBUTION.md").read_text()
    assert Path(_preprocess.__file__).suffix in (".so", ".pyd")  # compiled, not the .pyx
    assert (pkg / "py.typed").is_file()  # PEP 561: type checkers read the package's hints


def test_classify_the_samples_from_the_command_line(tmp_path):
    samples = Path(xray_infer.__file__).parent / "samples"
    out = tmp_path / "r.jsonl"
    r = _cli("classify", str(samples), "-q", "-o", str(out))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(row["status"] == "classified" for row in rows)
    info = json.loads(_cli("info", "--json").stdout)
    assert info["spec"]["model_version"] and info["variant"]["precision"]
