"""Run records and the validation-only choice of what to ship."""
import json
from pathlib import Path

import numpy as np

from .dataset import DATA_ROOT, limit_per_class, load_splits
from .metrics import summarize
from .runs import finished, weights_path
from .train import RunConfig

#: Groups of a grid's summary whose runs are reported but never shipped (runs that measure a
#: prior, such as training without it, would otherwise be selected against it).
NOT_CANDIDATES = ("comparisons",)


class RequestError(ValueError):
    """A request the trainer cannot carry out as given: nothing to select from, candidates that
    cannot be compared, phases whose inputs are missing. The command line prints it."""


def _group(folder, result):
    summary = Path(folder) / "summary.json"
    if not summary.exists():
        return None
    runs = json.loads(summary.read_text()).get("runs", {})
    return runs.get(result["config"]["name"], {}).get("group")


def candidates(folders, ensemble, data_root=DATA_ROOT, limit=0):
    """Validation-only choice of what to ship, from the runs that kept a checkpoint.

    Candidates: every single run (but those a grid ran for comparison only), and for each
    input size the ensemble of its ``ensemble`` best runs (by validation macro-F1). Each is
    scored by the validation macro-F1 of its (mean) validation probabilities; returns
    [(score, [run json paths])], best first. Runs validated on different splits cannot be
    ranked together, so mixing them is an error. ``data_root`` and ``limit`` must be those the
    runs were trained with (their validation labels are read from there).
    """
    runs = [(p, r) for folder in folders for p, r in finished(folder)
            if weights_path(p).exists() and _group(folder, r) not in NOT_CANDIDATES]
    if not runs:
        raise RequestError(f"no runs with checkpoints under {', '.join(map(str, folders))}")
    schemes = {RunConfig.from_dict(r["config"]).val_split for _, r in runs}
    if len(schemes) > 1:
        raise RequestError(f"runs under {', '.join(map(str, folders))} were validated on different "
                         f"splits ({', '.join(sorted(schemes))}); select within one")
    val = load_splits(data_root, scheme=schemes.pop())["val"]
    yval = np.array([r.label for r in (limit_per_class(val, limit) if limit else val)])

    def score(members):
        probs = np.mean([np.asarray(r["val_probs"]) for _, r in members], axis=0)
        return summarize(yval, probs)["macro_f1"]

    out = [(score([m]), [m[0]]) for m in runs]
    for size in sorted({r["config"]["net"]["input_size"] for _, r in runs}):
        same = sorted((m for m in runs if m[1]["config"]["net"]["input_size"] == size),
                      key=lambda m: m[1]["val"]["macro_f1"], reverse=True)[:ensemble]
        if ensemble > 1 and len(same) == ensemble:
            out.append((score(same), [m[0] for m in same]))
    return sorted(out, key=lambda c: c[0], reverse=True)
