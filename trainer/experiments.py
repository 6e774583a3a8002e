"""The ablation grid: each technique changed alone from one base, then combinations, then
hyperparameters, over several seeds. Every run is written to ``<out>/runs/<name>_s<seed>.json``
as it finishes (config, per-epoch curves, validation-selected metrics, test metrics once).

Selection uses validation macro-F1 averaged over seeds; test figures are reported, never used.
"""
import json
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch

from .arrays import load_arrays
from .dataset import load_splits
from . import runs
from .selection import RequestError
from .pretrained import MEAN as LITE_MEAN, STD as LITE_STD, LiteConfig
from .train import RunConfig, train_run

BASE = RunConfig()

#: Phase 1: one technique changed at a time (group -> [(run name, config)]).
ABLATIONS = {
    "base": [("base", BASE)],
    "padding": [("pad-valid", replace(BASE, net=replace(BASE.net, padding="valid"))),
                ("pad-reflect", replace(BASE, net=replace(BASE.net, padding="reflect")))],
    "dropout": [("drop-none", replace(BASE, net=replace(BASE.net, dropout="none"))),
                ("drop-cls-0.5", replace(BASE, net=replace(BASE.net, dropout_rate=0.5))),
                ("drop-spatial-0.1", replace(BASE, net=replace(BASE.net, dropout="spatial",
                                                                  dropout_rate=0.1)))],
    "batch_norm": [("bn-off", replace(BASE, net=replace(BASE.net, batch_norm=False), lr=5e-4))],
    "stride": [("stride-conv", replace(BASE, net=replace(BASE.net, downsample="stride"))),
               ("stride-stem", replace(BASE, net=replace(BASE.net, stem_stride=2)))],
    "training": [("no-augment", replace(BASE, augment=0.0)),
                 ("augment-2x", replace(BASE, augment=2.0)),
                 ("no-class-weights", replace(BASE, class_weights=False))],
}

#: Phase 3: hyperparameters, applied to the best configuration after phase 2.
HYPER = {
    "lr-0.5x": lambda c: replace(c, lr=c.lr / 2),
    "lr-2x": lambda c: replace(c, lr=c.lr * 2),
    "epochs-2x": lambda c: replace(c, epochs=c.epochs * 2),
}
#: More hyperparameters, run with ``--more-hyper`` (widths double the compute, size+32
#: about 1.6 times).
MORE_HYPER = {
    "batch-32": lambda c: replace(c, batch_size=32),
    "width-2x": lambda c: replace(c, net=replace(c.net, widths=tuple(2 * w for w in c.net.widths))),
    "size+32": lambda c: replace(c, net=replace(c.net, input_size=c.net.input_size + 32)),
}

#: Transfer learning (``python -m trainer transfer``): EfficientNet-Lite0 at 160 px. The
#: robustness priors (acquisition jitter, linear probe then a short, gentle fine-tune) are fixed
#: here, before the runs, for the reasons in docs/experiments-notes.md; validation selects only
#: among the runs of ``TRANSFER["candidates"]``. The others are reported, never shipped: the
#: same budget from random weights (scratch vs ImageNet) and the candidate without the jitter.
LITE = RunConfig(name="lite0-lpft", net=LiteConfig(input_size=160), mean=LITE_MEAN, std=LITE_STD,
                 probe_epochs=2, probe_lr=3e-3, epochs=3, lr=1e-4, weight_decay=1e-4,
                 augment=1.0, shift_augment=1.0, freeze_bn_stats=True)
V2 = replace(LITE, name="lite0-lpft-lr3e-4", lr=3e-4)  # shipped as 2.0.0
TRANSFER = {
    # The second candidate and the frozen batch-norm statistics were added on validation
    # evidence from a first attempt (runs/lite160-bnlag), before any test figure of these runs
    # was read; see docs/experiments-notes.md.
    "candidates": [LITE, V2],
    "comparisons": [replace(LITE, name="lite0-scratch", net=LiteConfig(160, pretrained=False),
                            probe_epochs=0, epochs=5, lr=2e-3, weight_decay=5e-4,
                            freeze_bn_stats=False),
                    replace(LITE, name="lite0-lpft-no-jitter", shift_augment=0.0)],
}

#: Model v3 (``python -m trainer transfer --grid v3``): v2's shipped recipe with exports'
#: presentation (windowing, gamma, bit depth, JPEG) added to its augmentation. Candidates and
#: selection fixed in docs/experiments-notes.md before any run; the five-epoch candidate was
#: dropped there, for time, before it ran.
V3 = {
    "candidates": [replace(V2, name="v3-present", present_augment=1.0)],
    "comparisons": [],
}
GRIDS = {"v2": TRANSFER, "v3": V3}

_DATA = {}  # per-process memo of loaded arrays, keyed by what preprocessing and the split use


def _data(cfg, limit=0):
    key = (cfg.net.input_size, cfg.mean, cfg.std, cfg.val_split)
    if key not in _DATA:
        _DATA[key] = load_arrays(load_splits(scheme=cfg.val_split), cfg.net.input_size,
                                 cfg.mean, cfg.std, limit)
    return _DATA[key]


def _run_one(args):
    cfg, out_dir, device, limit = args
    path = runs.result_path(out_dir, cfg)
    if path.exists():  # resume: a finished run is never repeated
        return runs.load(path)
    torch.set_num_threads(max(1, int(os.environ.get("TRAINER_THREADS", "2"))))
    log_path = runs.log_path(out_dir, cfg)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        try:
            result, state = train_run(cfg, _data(cfg, limit), device,
                                      log=lambda m: print(m, file=log, flush=True))
        except Exception as e:  # one broken variant must not end the grid; it is reported
            print(f"FAILED: {type(e).__name__}: {e}", file=log, flush=True)
            return {"config": cfg.to_dict(), "error": f"{type(e).__name__}: {e}"}
    runs.save(out_dir, cfg, result, state)
    return result


def run_grid(out_dir, seeds=(0, 1), workers=1, device="cpu", epochs=None, size=None,
             phases=(1, 2, 3), keep_checkpoints=None, limit=0, more_hyper=False,
             convs_per_block=None, val_split=None, log=print):
    """Run the phases; returns {run name: [result per seed]} and writes ``<out>/summary.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def adjust(cfg, name, group):
        """Apply the grid-wide overrides (phases 1-2; phase 3 starts from their result)."""
        if convs_per_block:
            cfg = replace(cfg, net=replace(cfg.net, convs_per_block=convs_per_block))
        if epochs:
            cfg = replace(cfg, epochs=epochs)
        if size:
            cfg = replace(cfg, net=replace(cfg.net, input_size=size))
        if val_split:
            cfg = replace(cfg, val_split=val_split)
        return replace(cfg, name=name), group
    results, groups, failed = {}, {}, []
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        def run(named):
            jobs = [(replace(cfg, seed=seed), out_dir, device, limit)
                    for (cfg, group) in named for seed in seeds]
            t0 = time.perf_counter()
            for cfg_seed, res in zip(jobs, pool.map(_run_one, jobs)):
                cfg = cfg_seed[0]
                if "error" in res:
                    failed.append(f"{cfg.name} s{cfg.seed}: {res['error']}")
                    log(f"{cfg.name} s{cfg.seed}: FAILED {res['error']}")
                    continue
                results.setdefault(cfg.name, []).append(res)
                log(f"{cfg.name} s{cfg.seed}: val f1 {res['val']['macro_f1']:.3f} "
                    f"acc {res['val']['accuracy']:.3f} (epoch {res['best_epoch']}), "
                    f"{res['train_seconds']:.0f}s; {time.perf_counter() - t0:.0f}s into phase")
            for cfg, group in named:
                if cfg.name in results:
                    groups[cfg.name] = {"group": group, "config": cfg.to_dict()}
            write_summary()

        def write_summary():
            best_name = max(results, key=lambda n: runs.score(results[n]))
            summary = {"selected": best_name, "selection": "mean validation macro-F1 over seeds",
                       "seeds": list(seeds), "device": device, "runs": groups,
                       "failed": failed}
            (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
            if keep_checkpoints is not None:
                # Ranked over every finished run in the folder, earlier invocations included.
                runs.keep_best_weights(out_dir, keep_checkpoints)
            return summary

        phase1 = [adjust(cfg, name, group) for group, items in ABLATIONS.items()
                  for name, cfg in items]
        if 1 in phases:
            run(phase1)
        else:  # later phases start from phase 1's runs: those in the folder, or refuse
            missing = [cfg.name for cfg, _ in phase1 if not any(
                (out_dir / "runs").glob(f"{cfg.name}_s*.json"))]
            if missing:
                raise RequestError(f"phases {', '.join(map(str, phases))} start from phase 1's "
                                 f"runs, and {out_dir} lacks {', '.join(missing[:3])}"
                                 f"{' ...' if len(missing) > 3 else ''}: run phase 1 first "
                                 f"(--phases 1)")
            run(phase1)  # finished runs are read back, not repeated
        base_score = runs.score(results["base"])
        if 2 in phases:
            helped = [name for name in results if name != "base"
                      and runs.score(results[name]) > base_score]
            combos = []
            if helped:
                ranked = sorted(helped, key=lambda n: runs.score(results[n]), reverse=True)
                combined, used = _combine([RunConfig.from_dict(groups[n]["config"])
                                           for n in ranked])
                log(f"phase 2: combining {used} (best first; skipped: changes already made by a "
                    f"better run, or that shrink the net to nothing)")
                combos.append(adjust(combined, "combo-" + "+".join(used), "combination"))
            log(f"phase 2: ablations that beat base on validation: {helped or 'none'}")
            if combos:
                run(combos)
        best_name = max(results, key=lambda n: runs.score(results[n]))
        if 3 in phases:
            best = RunConfig.from_dict(groups[best_name]["config"])
            # ``best`` already carries the overrides; hyperparameters change it from there.
            run([(replace(f(best), name=f"{best_name}--{h}"), "hyperparameters")
                 for h, f in {**HYPER, **(MORE_HYPER if more_hyper else {})}.items()])
    summary = write_summary()
    best_name = summary["selected"]
    log(f"selected on validation: {best_name}")
    return results, summary


def run_transfer(out_dir, group, seeds=(0,), device="cpu", limit=0, log=print, grid="v2",
                 names=()):
    """Run one group of a transfer grid (``GRIDS``), or its configurations ``names``, one run at
    a time (each uses every core); resumable."""
    out_dir = Path(out_dir)
    summary_path = out_dir / "summary.json"
    summary = (json.loads(summary_path.read_text()) if summary_path.exists() else
               {"selection": "validation macro-F1 of the runs in group 'candidates'",
                "runs": {}, "failed": []})
    unknown = set(names) - {c.name for c in GRIDS[grid][group]}
    if unknown:
        raise ValueError(f"not in {grid} {group}: {', '.join(sorted(unknown))}")
    for cfg in (c for c in GRIDS[grid][group] if not names or c.name in names):
        for seed in seeds:
            res = _run_one((replace(cfg, seed=seed), out_dir, device, limit))
            if "error" in res:
                summary["failed"].append(f"{cfg.name} s{seed}: {res['error']}")
                log(f"{cfg.name} s{seed}: FAILED {res['error']}")
                continue
            summary["runs"][cfg.name] = {"group": group, "config": replace(cfg, seed=0).to_dict()}
            log(f"{cfg.name} s{seed}: val f1 {res['val']['macro_f1']:.3f} acc "
                f"{res['val']['accuracy']:.3f} (epoch {res['best_epoch']}), "
                f"{res['train_seconds']:.0f}s")
    scored = {}
    for _, r in runs.finished(out_dir):
        if summary["runs"].get(r["config"]["name"], {}).get("group") == "candidates":
            scored.setdefault(r["config"]["name"], []).append(r)
    if scored:
        summary["selected"] = max(scored, key=lambda n: runs.score(scored[n]))
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=1))
    return summary


def _builds(cfg):
    """Whether the net of ``cfg`` runs at its input size (valid padding and strided stems can
    shrink the feature map to nothing)."""
    from .model import build
    try:
        with torch.no_grad():
            build(cfg.net)(torch.zeros(1, 1, cfg.net.input_size, cfg.net.input_size))
    except RuntimeError:
        return False
    return True


def _combine(configs):
    """Apply the configs' changes from BASE onto BASE, best first.

    A config's changes are taken only where they touch fields no better config changed, and
    only if the net still runs at its input size. Returns (config, names of configs applied).
    """
    top_fields = ("lr", "epochs", "batch_size", "weight_decay", "label_smoothing", "augment",
                  "class_weights")
    combined, used = BASE, []
    for c in configs:
        top = {k: getattr(c, k) for k in top_fields
               if getattr(c, k) != getattr(BASE, k) and getattr(combined, k) == getattr(BASE, k)}
        net = {k: getattr(c.net, k) for k in BASE.net.__dataclass_fields__
               if getattr(c.net, k) != getattr(BASE.net, k)
               and getattr(combined.net, k) == getattr(BASE.net, k)}
        # A dropout rate only matters with the dropout kind it was tried with.
        if "dropout_rate" in net and combined.net.dropout != c.net.dropout:
            del net["dropout_rate"]
        if not top and not net:
            continue
        candidate = replace(combined, net=replace(combined.net, **net), **top)
        if _builds(candidate):
            combined = candidate
            used.append(c.name)
    return combined, used
