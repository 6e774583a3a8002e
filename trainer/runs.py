"""A training run on disk, in one place: ``<folder>/runs/<name>_s<seed>.json`` (its result:
config, curves, metrics) beside ``.pt`` (its weights), written atomically, weights first, so
a result file always means a finished run; reading them back; and how runs are compared.

Every command that trains writes here (``train`` and ``experiments`` alike), so ``export
--select FOLDER`` finds any of them. A run is named by its config, never by parsing its file
name.
"""
import json
import os
from pathlib import Path

import numpy as np


def result_path(folder, cfg):
    return Path(folder) / "runs" / f"{cfg.name}_s{cfg.seed}.json"


def weights_path(result_file):
    return Path(result_file).with_suffix(".pt")


def log_path(folder, cfg):
    return Path(folder) / "logs" / f"{cfg.name}_s{cfg.seed}.log"


def save(folder, cfg, result, state=None):
    """Write a finished run (``state``: its weights, when kept); returns the result's path."""
    import torch
    path = result_path(folder, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    if state is not None:
        tmp = path.with_suffix(f".pt.tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, weights_path(path))
    tmp = path.with_suffix(f".json.tmp{os.getpid()}")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, path)
    return path


def load(path):
    return json.loads(Path(path).read_text())


def finished(folder):
    """[(result path, result)] of the finished runs under ``folder`` (failed ones left out)."""
    out = []
    for p in sorted((Path(folder) / "runs").glob("*.json")):
        r = load(p)
        if "error" not in r:
            out.append((p, r))
    return out


def name_of(result):
    return result["config"]["name"]


def score(results):
    """How runs of one configuration compare (its seeds' results): mean validation macro-F1,
    ties broken by the lower mean validation loss. The grid's "best" is the highest."""
    return (np.mean([r["val"]["macro_f1"] for r in results]),
            -np.mean([r["val"]["loss"] for r in results]))


def keep_best_weights(folder, k):
    """Delete the weights of every configuration in ``folder`` but the ``k`` best."""
    by_name = {}
    for _, r in finished(folder):
        by_name.setdefault(name_of(r), []).append(r)
    keep = set(sorted(by_name, key=lambda n: score(by_name[n]), reverse=True)[:k])
    for path, r in finished(folder):
        if name_of(r) not in keep:
            weights_path(path).unlink(missing_ok=True)
