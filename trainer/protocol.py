"""Model v4's protocol (docs/experiments-notes.md, fixed before any run), step by step:

1. ``run_cv``: each recipe once on each of 5 patient-grouped folds of the training pool (the
   published train split less the holdout), the last epoch kept, scored on the fold's held-out
   patients with the stress test (``trainer.stress``);
2. ``cv_table`` / ``choose_recipe``: means with standard errors, and the recipe the rule picks;
3. ``run_soup``: one linear probe on the pool, five fine-tunes from it, their uniform weight
   average; 3b. ``run_student`` (the soup having failed its check): a student distilled from
   the five, from the same probe;
4. ``compare``: a candidate (the soup or the student) against 2.0.0 and 3.0.0 on the holdout
   (paired patient bootstrap) and the shipping decision.

Every step resumes: a finished run is read back, never repeated. No step reads a test figure;
the soup's runs store their test probabilities for the report (``protocol_report``), made
after the pick.
"""
import json
import os
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold

from . import runs
from .arrays import load_arrays
from .dataset import DATA_ROOT, limit_per_class, load_splits
from .experiments import V2, V3
from .metrics import NORMAL, calibration, macro_f1, softmax, summarize
from .model import build
from .selection import RequestError
from .stress import flip_shares
from .train import predict_logits, train_run

#: The recipes compared, cheapest first (ties in the rule go to the earlier one).
RECIPES = {
    "r-v2": replace(V2, name="r-v2", keep_last=True),
    "r-v3": replace(V3["candidates"][0], name="r-v3", keep_last=True),
    "r-jsd": replace(V3["candidates"][0], name="r-jsd", keep_last=True, consistency=12.0),
}
FOLDS = 5
#: A recipe leaves contention when its mean paired macro-F1 difference from the best is below
#: this many standard errors.
CONTENTION_SE = 2.0
#: Differences of mean normal flip share below this are ties.
FLIP_TIE = 0.005
SOUP_MEMBERS = 5
#: The student's schedule (step 3b): four times a member's fine-tune.
STUDENT_EPOCHS = 12
#: The soup is used only if its holdout macro-F1 is at least its members' mean less this.
SOUP_SLACK = 0.01
BOOTSTRAP = 2000
#: The models a challenger must beat on the holdout (ONNX, scored in float32).
BASELINES = {"2.0.0": "benchmarks/models/v2.0.0.onnx", "3.0.0": "benchmarks/models/v3.0.0.onnx"}
ROOT = Path(__file__).resolve().parent.parent


def _splits(data_root, limit):
    s = load_splits(data_root)
    out = {"pool": s["train"], "holdout": s["val"], "test": s["test"]}
    return {k: limit_per_class(v, limit) for k, v in out.items()} if limit else out


def fold_indices(records, k=FOLDS, seed=0):
    """Held-out index arrays of ``k`` patient-grouped, class-stratified folds of ``records``."""
    labels = [r.label for r in records]
    groups = [r.patient for r in records]
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [held for _, held in cv.split(np.zeros(len(records)), labels, groups)]


def _threads():
    torch.set_num_threads(max(1, int(os.environ.get("TRAINER_THREADS", "2"))))


def _torch_predictor(cfg, state, device="cpu"):
    model = build(cfg.net, pretrained_weights=False)
    model.load_state_dict(state)
    model = model.to(device).eval()
    return lambda x: predict_logits(model, x, device)


def normalised(probs):
    """float64 probabilities whose rows sum to 1 (stored ones are rounded)."""
    probs = np.asarray(probs, np.float64)
    return probs / probs.sum(1, keepdims=True)


def held_out_figures(labels, probs):
    """What the protocol reads on held-out films: the headline metrics, normals called
    pneumonia (a share) and the log loss."""
    labels, probs = np.asarray(labels), normalised(probs)
    s = summarize(labels, probs)
    normal = labels == NORMAL
    called = (probs.argmax(1) != NORMAL) & normal
    return {"n": s["n"], "macro_f1": s["macro_f1"], "accuracy": s["accuracy"],
            "binary_accuracy": s["binary_accuracy"],
            "normals_called_pneumonia": float(called.sum() / max(normal.sum(), 1)),
            "log_loss": calibration(labels, probs)["log_loss"]}


def run_cv(out, recipes=None, folds=None, device="cpu", data_root=DATA_ROOT, limit=0,
           log=print):
    """Step 1: every (fold, recipe) run not yet in ``<out>/cv``, fold by fold."""
    folder = Path(out) / "cv"
    splits = _splits(data_root, limit)
    held = fold_indices(splits["pool"])
    for name in recipes or RECIPES:
        if name not in RECIPES:
            raise RequestError(f"unknown recipe {name!r} (one of {', '.join(RECIPES)})")
    x = y = None
    for f in (range(FOLDS) if folds is None else folds):
        for name in recipes or RECIPES:
            cfg = replace(RECIPES[name], seed=f)
            if runs.result_path(folder, cfg).exists():
                continue
            if x is None:
                x, y = load_arrays({"pool": splits["pool"]}, cfg.net.input_size, cfg.mean,
                                   cfg.std, limit)["pool"]
            _threads()
            train = np.setdiff1d(np.arange(len(y)), held[f])
            data = {"train": (x[train], y[train]), "val": (np.asarray(x[held[f]]), y[held[f]])}
            log_file = runs.log_path(folder, cfg)
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(log_file, "w") as fh:
                result, state = train_run(cfg, data, device, evaluate_test=False,
                                          log=lambda m: print(m, file=fh, flush=True))
            result["fold"] = f
            result["held_out"] = held_out_figures(data["val"][1], result["val_probs"])
            result["stress"] = flip_shares(_torch_predictor(cfg, state, device), *data["val"],
                                           cfg.mean, cfg.std)
            runs.save(folder, cfg, result, state)
            h = result["held_out"]
            log(f"fold {f} {name}: macro-F1 {h['macro_f1']:.3f}, normals called pneumonia "
                f"{h['normals_called_pneumonia']:.3f}, normal flips "
                f"{result['stress']['normal_mean']:.3f}, {result['train_seconds']:.0f}s")


def _fold_row(result):
    return dict(result["held_out"], normal_flip=result["stress"]["normal_mean"],
                pneumonia_flip=result["stress"]["pneumonia_mean"])


def _mean_se(values):
    v = np.asarray(values, float)
    return {"mean": float(v.mean()),
            "se": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")}


def cv_table(out):
    """Step 2's table: for each recipe its fold rows and mean/SE of every figure over the folds
    that every recipe has finished (so comparisons are paired), and the rule's choice."""
    by = {}
    for _, r in runs.finished(Path(out) / "cv"):
        by.setdefault(r["config"]["name"], {})[r["fold"]] = _fold_row(r)
    names = [n for n in RECIPES if n in by]
    common = sorted(set.intersection(*(set(by[n]) for n in names))) if names else []
    table = {"folds": common, "recipes": {}}
    for n in names:
        rows = [by[n][f] for f in common]
        table["recipes"][n] = {"folds": {f: by[n][f] for f in sorted(by[n])},
                               **{k: _mean_se([r[k] for r in rows]) for k in rows[0]}} \
            if rows else {"folds": by[n]}
    table["choice"] = choose_recipe(table) if len(common) >= 2 else None
    return table


def choose_recipe(table):
    """The rule fixed in the protocol: contention by paired macro-F1 difference from the best,
    then the lowest mean normal flip share, ties to the cheaper recipe."""
    rec, common = table["recipes"], table["folds"]
    best = max(rec, key=lambda n: rec[n]["macro_f1"]["mean"])
    steps, contention = [], []
    for n in rec:
        d = [rec[n]["folds"][f]["macro_f1"] - rec[best]["folds"][f]["macro_f1"] for f in common]
        m = _mean_se(d)
        keep = n == best or m["mean"] >= -CONTENTION_SE * m["se"]
        steps.append(f"{n}: macro-F1 difference from {best} {m['mean']:+.4f} "
                     f"(SE {m['se']:.4f}): {'in contention' if keep else 'out'}")
        if keep:
            contention.append(n)
    lowest = min(rec[n]["normal_flip"]["mean"] for n in contention)
    chosen = next(n for n in RECIPES if n in contention
                  and rec[n]["normal_flip"]["mean"] < lowest + FLIP_TIE)
    steps.append(f"lowest mean normal flip share in contention {lowest:.4f}; "
                 f"within {FLIP_TIE}, the cheapest: {chosen}")
    return {"recipe": chosen, "reference": best, "steps": steps}


def _probe_config(recipe):
    return replace(RECIPES[recipe], name=f"{recipe}-probe", epochs=0, seed=0)


def _member_config(recipe, seed):
    return replace(RECIPES[recipe], name=f"{recipe}-member", probe_epochs=0, seed=seed)


def soup_config(recipe):
    return replace(RECIPES[recipe], name=f"{recipe}-soup", seed=0)


def student_config(recipe):
    return replace(RECIPES[recipe], name=f"{recipe}-student", probe_epochs=0,
                   epochs=STUDENT_EPOCHS, seed=0)


def ensemble_teacher(cfg, states, device="cpu"):
    """A batch -> the mean of the members' softmax outputs (eval mode, no gradient)."""
    models = []
    for state in states:
        m = build(cfg.net, pretrained_weights=False)
        m.load_state_dict(state)
        models.append(m.to(device).eval())

    @torch.no_grad()
    def probs(xb):
        return torch.stack([torch.softmax(m(xb).float(), 1) for m in models]).mean(0)
    return probs


def average_states(states):
    """The uniform average of state dicts; integer buffers (batch counters) from the first."""
    out = {}
    for k, v in states[0].items():
        out[k] = (torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype)
                  if v.is_floating_point() else v.clone())
    return out


def _soup_data(recipe, data_root, limit):
    cfg = RECIPES[recipe]
    data = load_arrays(_splits(data_root, limit), cfg.net.input_size, cfg.mean, cfg.std, limit)
    return {"train": data["pool"], "val": data["holdout"], "test": data["test"]}


def _trained(folder, run_cfg, data, device, log, evaluate_test, made=None, **kw):
    """A run of ``folder``: read back when finished, else trained and saved, with ``made`` (how
    it was made) in its result; (path, weights)."""
    path = runs.result_path(folder, run_cfg)
    if not path.exists():
        log_file = runs.log_path(folder, run_cfg)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "w") as fh:
            result, state = train_run(run_cfg, data, device, evaluate_test=evaluate_test,
                                      log=lambda m: print(m, file=fh, flush=True), **kw)
        runs.save(folder, run_cfg, dict(result, **(made or {})), state)
        log(f"{run_cfg.name} s{run_cfg.seed}: holdout macro-F1 "
            f"{result['val']['macro_f1']:.3f}, {result['train_seconds']:.0f}s")
    return path, torch.load(runs.weights_path(path), weights_only=True)


def run_soup(out, recipe, members=SOUP_MEMBERS, device="cpu", data_root=DATA_ROOT, limit=0,
             log=print):
    """Step 3: the probe, the members (resumable), and their soup in ``<out>/soup``."""
    folder = Path(out) / "soup"
    data = _soup_data(recipe, data_root, limit)
    _threads()
    _, probe = _trained(folder, _probe_config(recipe), data, device, log, False)
    member_paths, states = [], []
    for seed in range(members):
        path, state = _trained(folder, _member_config(recipe, seed), data, device, log, True,
                               init_state=probe)
        member_paths.append(path)
        states.append(state)
    soup = average_states(states)
    scfg = soup_config(recipe)
    predict = _torch_predictor(scfg, soup, device)
    result = {"config": scfg.to_dict(), "device": str(device),
              "soup": {"recipe": recipe, "members": [p.name for p in member_paths],
                       "seeds": list(range(members)), "probe": _probe_config(recipe).name,
                       "rule": "uniform weight average (Wortsman et al. 2022)"}}
    for split, key in (("val", "val"), ("test", "test")):
        x, y = data[split]
        probs = softmax(predict(x))
        result[f"{key}_probs"] = np.round(probs, 5).tolist()
        result[key] = summarize(y, probs)
    result["best_epoch"] = None
    path = runs.save(folder, scfg, result, soup)
    log(f"wrote {path}: holdout macro-F1 {result['val']['macro_f1']:.3f}")
    return path


def _members(folder, recipe):
    """The soup's finished members: [(path, weights)], seeds in order."""
    found = sorted(((r["config"]["seed"], p) for p, r in runs.finished(folder)
                    if r["config"]["name"] == _member_config(recipe, 0).name))
    return [(p, torch.load(runs.weights_path(p), weights_only=True)) for _, p in found]


def run_student(out, recipe, device="cpu", data_root=DATA_ROOT, limit=0, log=print):
    """Step 3b: a student distilled from the soup's members, from the soup's probe, in
    ``<out>/soup`` beside them."""
    folder = Path(out) / "soup"
    probe_path = runs.result_path(folder, _probe_config(recipe))
    members = _members(folder, recipe)
    if not probe_path.exists() or not members:
        raise RequestError(f"no probe or members of {recipe} under {folder}: run `v4 soup` first")
    data = _soup_data(recipe, data_root, limit)
    _threads()
    cfg = student_config(recipe)
    teacher = ensemble_teacher(cfg, [s for _, s in members], device)
    made = {"student": {"recipe": recipe, "teachers": [p.name for p, _ in members],
                        "probe": _probe_config(recipe).name,
                        "rule": "function matching on the same augmented view (Beyer et al. "
                                "2022), KL to the members' mean output"}}
    path, _ = _trained(folder, cfg, data, device, log, True, made=made, teacher=teacher,
                       init_state=torch.load(runs.weights_path(probe_path), weights_only=True))
    return path


def _onnx_predictor(path):
    from xray_infer.model import load_model
    session, spec = load_model(path, providers=["CPUExecutionProvider"], precision="float32")

    def predict(x, batch=64):
        return np.concatenate([session.run([spec.output_name],
                                           {spec.input_name: np.asarray(x[i:i + batch])})[0]
                               for i in range(0, len(x), batch)])
    return predict, spec


def patient_resamples(patients, n=BOOTSTRAP, seed=0):
    """``n`` index arrays, each the films of a resample (with replacement) of the patients."""
    ids = {p: i for i, p in enumerate(dict.fromkeys(patients))}
    which = np.array([ids[p] for p in patients])
    members = [np.flatnonzero(which == i) for i in range(len(ids))]
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])


def paired_bootstrap(labels, preds_a, preds_b, patients, n=BOOTSTRAP, seed=0):
    """95% interval (and mean) of macro-F1(a) - macro-F1(b) over resamples of patients."""
    labels, preds_a, preds_b = map(np.asarray, (labels, preds_a, preds_b))
    diffs = [macro_f1(labels[i], preds_a[i]) - macro_f1(labels[i], preds_b[i])
             for i in patient_resamples(patients, n, seed)]
    lo, hi = np.percentile(diffs, (2.5, 97.5))
    return {"difference": macro_f1(labels, preds_a) - macro_f1(labels, preds_b),
            "low": float(lo), "high": float(hi)}


CANDIDATES = {"soup": soup_config, "student": student_config}


def holdout_path(out, candidate):
    return Path(out) / f"holdout-{candidate}.json"


def compare(out, recipe, candidate="soup", data_root=DATA_ROOT, limit=0, log=print):
    """Step 4: the candidate (the soup, or step 3b's student) against the baselines on the
    holdout, and the decision; written to ``holdout_path(out, candidate)``."""
    folder = Path(out) / "soup"
    scfg = CANDIDATES[candidate](recipe)
    soup_path = runs.result_path(folder, scfg)
    if not soup_path.exists():
        raise RequestError(f"no {candidate} at {soup_path}: run `v4 {candidate}` first")
    soup = runs.load(soup_path)
    name = f"v4-{candidate}"
    holdout = _splits(data_root, limit)["holdout"]
    x, y = load_arrays({"h": holdout}, scfg.net.input_size, scfg.mean, scfg.std, limit)["h"]
    patients = [r.patient for r in holdout]
    _threads()
    predictors = {name: _torch_predictor(
        scfg, torch.load(runs.weights_path(soup_path), weights_only=True))}
    for version, rel in BASELINES.items():
        predict, spec = _onnx_predictor(ROOT / rel)
        if (spec.input_size, spec.mean, spec.std) != (scfg.net.input_size, scfg.mean, scfg.std):
            raise RequestError(f"{rel} takes other inputs than the recipe's")
        predictors[version] = predict
    models = {}
    for model, predict in predictors.items():
        probs = softmax(predict(x))
        models[model] = dict(held_out_figures(y, probs),
                             stress=flip_shares(predict, x, y, scfg.mean, scfg.std))
        models[model]["preds"] = probs.argmax(1).tolist()
    # The soup must stay near its members (else they left the probe's basin); a student has
    # no such check.
    members = [runs.load(folder / "runs" / m)["val"]["macro_f1"]
               for m in soup.get("soup", {}).get("members", [])]
    soup_ok = not members or models[name]["macro_f1"] >= np.mean(members) - SOUP_SLACK
    pairs = {f"{a} - {b}": paired_bootstrap(y, models[a]["preds"], models[b]["preds"], patients)
             for a, b in combinations(models, 2)}
    beats = lambda a, b: (pairs[f"{a} - {b}"]["low"] > 0 if f"{a} - {b}" in pairs  # noqa: E731
                          else pairs[f"{b} - {a}"]["high"] < 0)
    clears = soup_ok and all(beats(name, b) for b in BASELINES)
    if clears:
        ship, why = name, "its holdout macro-F1 beats 2.0.0 and 3.0.0 beyond the bootstrap"
    else:
        pool = [m for m in models if soup_ok or m != name]
        contention = [m for m in pool if not any(beats(o, m) for o in pool if o != m)]
        lowest = min(models[m]["stress"]["normal_mean"] for m in contention)
        tied = [m for m in contention if models[m]["stress"]["normal_mean"] < lowest + FLIP_TIE]
        ship = "3.0.0" if "3.0.0" in tied else tied[0]
        why = ((f"{name} not used: more than {SOUP_SLACK} below its members' mean; "
                if not soup_ok else "") +
               f"no clear win; in contention {contention}, lowest holdout normal flip share "
               f"{lowest:.4f}")
    record = {"recipe": recipe, "candidate": name, "members_macro_f1": members,
              "candidate_used": bool(soup_ok),
              "models": {k: {kk: vv for kk, vv in v.items() if kk != "preds"}
                         for k, v in models.items()},
              "bootstrap": pairs, "ship": ship, "why": why}
    holdout_path(out, candidate).write_text(json.dumps(record, indent=1))
    for model, m in models.items():
        log(f"{model}: holdout macro-F1 {m['macro_f1']:.4f}, normals called pneumonia "
            f"{m['normals_called_pneumonia']:.3f}, normal flips {m['stress']['normal_mean']:.4f}")
    for k, v in pairs.items():
        log(f"{k}: {v['difference']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}]")
    log(f"ships: {ship} ({why})")
    return record


def print_table(table, log=print):
    log(f"folds every recipe finished: {table['folds']}")
    for n, r in table["recipes"].items():
        if "macro_f1" not in r:
            log(f"{n}: folds {sorted(r['folds'])}")
            continue
        log(f"{n}: macro-F1 {r['macro_f1']['mean']:.4f} ± {r['macro_f1']['se']:.4f}, "
            f"normals called pneumonia {r['normals_called_pneumonia']['mean']:.3f} ± "
            f"{r['normals_called_pneumonia']['se']:.3f}, normal flips "
            f"{r['normal_flip']['mean']:.4f} ± {r['normal_flip']['se']:.4f}, pneumonia flips "
            f"{r['pneumonia_flip']['mean']:.4f} ± {r['pneumonia_flip']['se']:.4f}")
    if table["choice"]:
        for s in table["choice"]["steps"]:
            log("  " + s)
        log(f"chosen recipe: {table['choice']['recipe']}")
