"""Benchmarks: each prints a table and, with --json, writes its numbers and the machine.

    python -m benchmarks preprocess   # Cython kernel vs OpenCV vs Pillow on 240 full-res scans
    python -m benchmarks decode       # JPEG decoding cost, full and reduced size
    python -m benchmarks inference    # ONNX Runtime vs PyTorch eager, batch 1..128
    python -m benchmarks e2e          # folder scoring vs a naive per-image loop, decode bound
    python -m benchmarks parity       # torch vs ORT, kernel vs reference, full-res vs 224 copies
    python -m benchmarks ray --cycle 10  # Ray engine vs in-process over 2,400 inputs (ray extra)
    python -m benchmarks scope        # the scope gate: kept, refused per collection, its cost
    python -m benchmarks accuracy --json docs/bench/accuracy.json   # each variant, test split
    python -m benchmarks calibration --json docs/bench/calibration.json \
        --out docs/img/reliability.png  # expected calibration error, reliability diagram
    python -m benchmarks robustness --json docs/bench/robustness.json --out docs/robustness.md
                                      # label and scope agreement under real exports' changes
    python -m benchmarks all --json-dir docs/bench --baseline-model benchmarks/models/v1.0.0.onnx \
        --baseline-model benchmarks/models/v2.0.0.onnx
    python -m benchmarks heatmaps --json docs/bench/heatmaps.json   # what --heatmaps costs
    python -m benchmarks report      # docs/benchmarks.md from docs/bench/*.json
"""
import argparse
import os
from pathlib import Path

from trainer.dataset import DATA_ROOT

from . import common
from . import parity as _parity
from . import ray_engine, speed

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {"preprocess": speed.preprocess, "decode": speed.decode, "inference": speed.inference,
            "e2e": speed.e2e, "parity": _parity.parity}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", choices=[*COMMANDS, "ray", "scope", "robustness", "accuracy",
                                     "calibration", "heatmaps", "all", "report"])
    p.add_argument("--data", default=DATA_ROOT, help="dataset root (holds chest_xray/, fullres/)")
    p.add_argument("--limit", type=int, default=0, help="use only N inputs (smoke runs)")
    p.add_argument("--repeat", type=int, default=5, help="timed repetitions (median reported)")
    p.add_argument("--json", help="write results here (single benchmark)")
    p.add_argument("--json-dir", help="with 'all': write <dir>/<benchmark>.json")
    p.add_argument("--model", help="ONNX model (default: the bundled one)")
    p.add_argument("--checkpoint", default=str(ROOT / "models" / "default.pt"),
                   help="torch checkpoint of the same model (python -m trainer export "
                        "--save-checkpoint)")
    p.add_argument("--providers", type=lambda s: s.split(","), default=["CPUExecutionProvider"])
    p.add_argument("--device", default="cpu", help="torch device for the baselines")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--batch-size", type=int,
                   help="e2e batch size (default: the classifier's for the provider)")
    p.add_argument("--cycle", type=int, default=1,
                   help="e2e, ray: each timed pass goes over the scans this many times (a pass of a "
                        "few hundred scans on a fast machine is too short to time)")
    p.add_argument("--baseline-model", action="append",
                   help="e2e: also time this model through the same pipeline, in the same run "
                        "(e.g. benchmarks/models/v1.0.0.onnx; repeat for more)")
    p.add_argument("--gpu-note", default=str(ROOT / "docs" / "bench" / "gpu.md"),
                   help="report: Markdown for the GPU section")
    p.add_argument("--out", default=None,
                   help="report: the Markdown file to write (default docs/benchmarks.md); "
                        "robustness: its docs page; calibration: the reliability diagram (PNG)")
    a = p.parse_args(argv)
    if a.which == "report":
        from .report import write
        out = a.out or str(ROOT / "docs" / "benchmarks.md")
        print(f"wrote {write(a.json_dir or ROOT / 'docs' / 'bench', out, a.gpu_note)}")
        return
    common.set_data_root(a.data)
    if a.which == "ray":  # not in "all": it needs the ray extra
        ray_engine.ray_engine(a)
        return
    if a.which == "scope":  # not in "all": an evaluation more than a speed benchmark
        from .scope import scope
        scope(a)
        return
    if a.which == "accuracy":  # an evaluation, not a speed benchmark
        from .accuracy import accuracy
        accuracy(a)
        return
    if a.which == "calibration":  # likewise
        from .calibration import calibration
        calibration(a)
        return
    if a.which == "heatmaps":  # the command line's side outputs
        from .heatmaps import heatmaps
        heatmaps(a)
        return
    if a.which == "robustness":  # likewise
        from .robustness import robustness
        robustness(a)
        return
    names = list(COMMANDS) if a.which == "all" else [a.which]
    json_path = a.json
    for name in names:
        if a.json_dir:
            a.json = os.path.join(a.json_dir, f"{name}.json")
        else:
            a.json = json_path
        COMMANDS[name](a)


if __name__ == "__main__":
    main()
