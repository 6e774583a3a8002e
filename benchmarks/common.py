"""Timing helpers and the machine description every benchmark prints and saves."""
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from trainer.dataset import DATA_ROOT, fullres_scans

ROOT = Path(__file__).resolve().parent.parent
#: Where the scans are read from: ``trainer.dataset.DATA_ROOT`` unless ``--data`` says otherwise.
DATA = DATA_ROOT


def set_data_root(path):
    global DATA
    DATA = Path(path)


def machine():
    """What the numbers were measured on."""
    import cv2
    import onnxruntime as ort
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "opencv": cv2.__version__, "onnxruntime": ort.__version__,
            "platform": platform.platform()}
    try:
        import torch
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def timeit(fn, repeat=5, warmup=1):
    """Seconds per call of ``fn()``: list of ``repeat`` measurements after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def median(xs):
    return statistics.median(xs)


def percentile(xs, q):
    return float(np.percentile(np.asarray(xs), q))


def print_table(title, header, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def save(path, name, payload):
    if not path:
        return
    payload = {"benchmark": name, "machine": machine(), **payload}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=1))
    print(f"\nwrote {path}")


def fullres_paths(limit=0):
    paths = fullres_scans(DATA / "fullres")
    if not paths:
        raise SystemExit(f"no full-resolution scans under {DATA / 'fullres'} (set --data)")
    return paths[:limit] if limit else paths
