"""What ``classify --heatmaps`` costs on full-resolution scans: the same folder classified
plain, with overlays at the default size and at full size, through the command line, in one
run (the ratios are the result; seconds depend on the machine)."""
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import common


def heatmaps(a):
    paths = common.fullres_paths(a.limit)
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        scans = Path(tmp) / "scans"
        scans.mkdir()
        for p in paths:
            shutil.copy(p, scans / Path(p).name)
        settings = {"plain": [], "overlays (default size)": ["--heatmaps", f"{tmp}/default"],
                    "overlays (full size)": ["--heatmaps", f"{tmp}/full", "--heatmap-size", "0"]}
        for name, extra in settings.items():
            seconds = []
            for i in range(a.repeat):
                for d in ("default", "full"):
                    shutil.rmtree(Path(tmp) / d, ignore_errors=True)
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "xray_infer", "classify", str(scans), "-q",
                                "-o", f"{tmp}/{i}.csv", "--overwrite", *extra], check=True)
                seconds.append(time.perf_counter() - t0)
            folder = Path(extra[1]) if extra else None
            written = sum(f.stat().st_size for f in folder.iterdir()) if folder else 0
            results[name] = {"seconds": common.median(seconds), "bytes_written": written}
    base = results["plain"]["seconds"]
    for name, r in results.items():
        r["cost_vs_plain"] = r["seconds"] / base
        rows.append((name, f"{r['seconds']:.1f}", f"{r['cost_vs_plain']:.2f}x",
                     f"{r['bytes_written'] / 2 ** 20:.0f}"))
    common.print_table(f"classify on {len(paths)} full-resolution scans (median of {a.repeat})",
                       ["run", "seconds", "cost", "MiB of overlays"], rows)
    common.save(a.json, "heatmaps", {"scans": len(paths), "repeat": a.repeat, "rows": results})
