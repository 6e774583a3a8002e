"""Model v4's report, made after the pick (docs/experiments-notes.md, "Reported after the
export"): every cross-validation run and every run of the soup with 95% patient-bootstrap
intervals on the films it was scored on, the holdout comparisons and their decisions, and then
the test split, read here for the first time: the candidates against 2.0.0 and 3.0.0 with
intervals, McNemar's exact test, calibration, the spread of the soup's members, and the targets
met or missed. It reports; nothing in it chooses.
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binomtest

from . import runs
from .arrays import load_arrays
from .metrics import NORMAL, calibration, macro_f1, softmax, summarize
from .export import fit_temperature
from .protocol import (BASELINES, BOOTSTRAP, CANDIDATES, ROOT, _onnx_predictor, _splits,
                       _torch_predictor, cv_table, fold_indices, holdout_path, normalised,
                       patient_resamples)
from .train import RunConfig

#: The issue's targets on the test split, reported as met or missed (never used to choose).
TARGETS = {"accuracy": (">=", 0.88), "binary_accuracy": (">=", 0.93),
           "normals_called_pneumonia": ("<=", 30), "ece": ("<=", 0.05)}
INTERVAL_METRICS = {
    "accuracy": lambda y, p: float((y == p).mean()),
    "macro_f1": macro_f1,
    "binary_accuracy": lambda y, p: float(((p != NORMAL) == (y != NORMAL)).mean()),
}


def figures(labels, probs, patients, n=BOOTSTRAP):
    """Headline figures of ``probs`` on ``labels``, each with its 95% interval over resamples of
    the patients, normals called pneumonia (a count) and the calibration figures."""
    labels, probs = np.asarray(labels), normalised(probs)
    preds = probs.argmax(1)
    s = summarize(labels, probs)
    samples = {k: [] for k in INTERVAL_METRICS}
    for idx in patient_resamples(patients, n):
        for k, fn in INTERVAL_METRICS.items():
            samples[k].append(fn(labels[idx], preds[idx]))
    out = {"n": s["n"], "binary_auc": s["binary_auc"], "confusion": s["confusion"],
           "normals": int((labels == NORMAL).sum()),
           "normals_called_pneumonia": int(((preds != NORMAL) & (labels == NORMAL)).sum())}
    for k, fn in INTERVAL_METRICS.items():
        out[k] = fn(labels, preds)
        out[f"{k}_95"] = [float(v) for v in np.percentile(samples[k], (2.5, 97.5))]
    out.update(calibration(labels, probs))
    return out


def mcnemar(labels, preds_a, preds_b):
    """McNemar's exact test of a against b on the same films: the films only a gets right, the
    films only b gets right, and the two-sided binomial p-value of that split."""
    right_a, right_b = np.asarray(preds_a) == labels, np.asarray(preds_b) == labels
    only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    p = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
    return {"only_a_right": only_a, "only_b_right": only_b, "p": float(p)}


def spread(rows, keys=("accuracy", "macro_f1", "binary_accuracy", "normals_called_pneumonia")):
    """Mean, standard deviation, lowest and highest of each figure over runs."""
    return {k: {"mean": float(np.mean([r[k] for r in rows])),
                "sd": float(np.std([r[k] for r in rows], ddof=1)) if len(rows) > 1 else 0.0,
                "min": float(min(r[k] for r in rows)), "max": float(max(r[k] for r in rows))}
            for k in keys}


def targets(row):
    out = {}
    for k, (op, bound) in TARGETS.items():
        met = row[k] >= bound if op == ">=" else row[k] <= bound
        out[k] = {"value": row[k], "target": f"{op} {bound}", "met": bool(met)}
    return out


def report(out, model, data_root, limit=0, log=print):
    """The whole report as a dict (see the module's docstring); ``model`` is the bundled model,
    ``limit`` the smoke runs' images per class."""
    out = Path(out)
    splits = _splits(data_root, limit)
    patients = {k: [r.patient for r in v] for k, v in splits.items()}
    table = cv_table(out)
    rec = {"cv": {"folds": table["folds"], "choice": table["choice"], "runs": []}}

    pool_labels = np.array([r.label for r in splits["pool"]])
    held = fold_indices(splits["pool"])
    for _, r in runs.finished(out / "cv"):
        idx = held[r["fold"]]
        row = figures(pool_labels[idx], r["val_probs"], [patients["pool"][i] for i in idx])
        rec["cv"]["runs"].append({"recipe": r["config"]["name"], "fold": r["fold"],
                                  "seed": r["config"]["seed"], **row,
                                  "normal_flip": r["stress"]["normal_mean"],
                                  "pneumonia_flip": r["stress"]["pneumonia_mean"]})
    rec["cv"]["recipes"] = {n: {k: v for k, v in t.items() if k != "folds"}
                            for n, t in table["recipes"].items()}
    log(f"cross-validation: {len(rec['cv']['runs'])} runs")

    rec["holdout_decisions"] = {}
    for c in CANDIDATES:  # the soup's comparison, then the student's where it ran
        if holdout_path(out, c).exists():
            made = json.loads(holdout_path(out, c).read_text())
            rec["holdout_decisions"][c] = dict(
                {k: made[k] for k in ("candidate", "candidate_used", "bootstrap", "ship", "why")},
                stress={k: v["stress"] for k, v in made["models"].items()})
    order = ("-probe", "-member", "-soup", "-student")  # as they were made
    soup_runs = sorted((r for _, r in runs.finished(out / "soup")),
                       key=lambda r: ([r["config"]["name"].endswith(o) for o in order].index(True),
                                      r["config"]["seed"]))
    y = {k: np.array([r.label for r in splits[k]]) for k in ("holdout", "test")}
    rec["soup_runs"] = []
    for r in soup_runs:
        row = {"run": f"{r['config']['name']}_s{r['config']['seed']}", "seed": r["config"]["seed"],
               "holdout": figures(y["holdout"], r["val_probs"], patients["holdout"])}
        if "test_probs" in r:
            row["test"] = figures(y["test"], r["test_probs"], patients["test"])
        rec["soup_runs"].append(row)
    members = [r for r in rec["soup_runs"] if "-member_" in r["run"]]
    rec["members_test_spread"] = spread([r["test"] for r in members]) if members else None
    log(f"soup: {len(soup_runs)} runs")

    # The models on the holdout and (first read here) the test split: the exported ones through
    # ONNX, calibrated; the soup in torch with a temperature fitted on the holdout as an export
    # fits it; the members' averaged outputs (five times the cost: the distillation's teacher).
    models, digests = {}, {}
    for name, path in {**{v: ROOT / p for v, p in BASELINES.items()}, "bundled": ROOT / model}.items():
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        if digest in digests:
            log(f"{name} is {digests[digest]} ({Path(path).name})")
            rec["bundled"] = digests[digest]
            continue
        predict, spec = _onnx_predictor(path)
        x = load_arrays({k: splits[k] for k in ("holdout", "test")}, spec.input_size, spec.mean,
                        spec.std, limit)
        models[name] = {"what": f"{spec.model_version} ({Path(path).relative_to(ROOT)}), ONNX "
                                "float32 with its temperature",
                        **{k: softmax(predict(x[k][0])) for k in ("holdout", "test")}}
        digests[digest] = rec["bundled"] = name
    for c in CANDIDATES:
        made = [r for r in soup_runs if r["config"]["name"].endswith(f"-{c}")]
        if not made:
            continue
        cfg = RunConfig.from_dict(made[0]["config"])
        predict = _torch_predictor(cfg, torch.load(runs.weights_path(
            runs.result_path(out / "soup", cfg)), weights_only=True))
        x = load_arrays({k: splits[k] for k in ("holdout", "test")}, cfg.net.input_size, cfg.mean,
                        cfg.std, limit)
        logits = {k: predict(x[k][0]) for k in ("holdout", "test")}
        t = fit_temperature(logits["holdout"], y["holdout"])
        models[f"v4-{c}"] = {"what": f"the {c} ({cfg.name}), torch, temperature {t:.3f} fitted "
                                     "on the holdout",
                             **{k: softmax(v / t) for k, v in logits.items()}}
    members_runs = [r for r in soup_runs if r["config"]["name"].endswith("-member")]
    models["members' average"] = {
        "what": f"the mean of the {len(members_runs)} members' probabilities, uncalibrated "
                "(not a candidate: five times the cost)",
        **{k: np.mean([r[f"{'val' if k == 'holdout' else 'test'}_probs"] for r in members_runs],
                      0) for k in ("holdout", "test")}}
    rec["models"] = {}
    for name, m in models.items():
        rec["models"][name] = {"what": m["what"], **{
            k: figures(y[k], m[k], patients[k]) for k in ("holdout", "test")}}
        log(f"{name}: test accuracy {rec['models'][name]['test']['accuracy']:.3f}")
    preds = {name: np.asarray(m["test"]).argmax(1) for name, m in models.items()}
    rivals = [m for m in models if m != "members' average"]  # baselines first
    rec["mcnemar_test"] = {f"{a} vs {b}": mcnemar(y["test"], preds[a], preds[b])
                           for i, a in enumerate(rivals) for b in rivals[:i] if b in BASELINES}
    rec["targets"] = {n: targets(rec["models"][n]["test"])
                      for n in (rec["bundled"], *(f"v4-{c}" for c in CANDIDATES))
                      if n in rec["models"]}
    return rec


def _ci(row, k, digits=3):
    lo, hi = row[f"{k}_95"]
    return f"{row[k]:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def _model_cols(row):
    return (f"{_ci(row, 'accuracy')} | {_ci(row, 'macro_f1')} | {_ci(row, 'binary_accuracy')} | "
            f"{row['normals_called_pneumonia']} of {row['normals']} | {row['binary_auc']:.3f}")


MODEL_HEAD = ("3-class accuracy | macro-F1 | normal vs pneumonia | normals called pneumonia | "
              "ROC AUC")


def markdown(rec, command):
    """docs/protocol-v4.md from ``report``'s record."""
    members = [r for r in rec["soup_runs"] if "-member_" in r["run"]]
    lines = ["# Model v4: the protocol's results", "",
             f"Made by `{command}` from the protocol's run folder (docs/experiments-notes.md,",
             '"Model v4: the protocol, fixed before any run"). Every interval is a 95% bootstrap '
             "over patients (2,000 resamples, seed 0).", "",
             "## 1. Cross-validation of the recipes (5 patient-grouped folds of the training pool)",
             "", "Each run scored on its fold's held-out patients; the stress test is the share of "
             "held-out normals (pneumonias) whose label flips under the six export changes.", "",
             f"| recipe | fold | {MODEL_HEAD} | normal flips | pneumonia flips |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rec["cv"]["runs"], key=lambda r: (r["recipe"], r["fold"])):
        lines.append(f"| {r['recipe']} | {r['fold']} | {_model_cols(r)} | "
                     f"{r['normal_flip']:.3f} | {r['pneumonia_flip']:.3f} |")
    lines += ["", f"Mean ± standard error over the folds every recipe finished "
              f"({rec['cv']['folds']}):", "",
              "| recipe | macro-F1 | accuracy | normal vs pneumonia | normals called pneumonia "
              "(share) | log loss | normal flips | pneumonia flips |",
              "|---|---|---|---|---|---|---|---|"]
    ms = lambda m: f"{m['mean']:.4f} ± {m['se']:.4f}"  # noqa: E731
    for n, t in rec["cv"]["recipes"].items():
        lines.append(f"| {n} | {ms(t['macro_f1'])} | {ms(t['accuracy'])} | "
                     f"{ms(t['binary_accuracy'])} | {ms(t['normals_called_pneumonia'])} | "
                     f"{ms(t['log_loss'])} | {ms(t['normal_flip'])} | {ms(t['pneumonia_flip'])} |")
    choice = rec["cv"]["choice"]
    lines += ["", "The rule, step by step:", ""] + [f"- {s}" for s in choice["steps"]]
    lines += [f"- chosen: **{choice['recipe']}**", "",
              "## 2. The soup and the holdout (the 788 validation patients)", "",
              f"The probe, the {len(members)} members (fine-tunes from the probe, seeds "
              f"{', '.join(str(r['seed']) for r in members)}; the last epoch each) and their uniform "
              "weight average, uncalibrated, scored in torch:", "",
              f"| run | {MODEL_HEAD} |", "|---|---|---|---|---|---|"]
    for r in rec["soup_runs"]:
        lines.append(f"| {r['run']} | {_model_cols(r['holdout'])} |")
    for c, d in rec["holdout_decisions"].items():
        lines += ["", f"**The {c} on the holdout.** Stress test (mean share of labels flipped):",
                  "", "| model | normals | pneumonias |", "|---|---|---|"]
        lines += [f"| {k} | {v['normal_mean']:.4f} | {v['pneumonia_mean']:.4f} |"
                  for k, v in d["stress"].items()]
        lines += ["", "Paired bootstrap of the macro-F1 difference (holdout patients):", "",
                  "| pair | difference | 95% interval |", "|---|---|---|"]
        lines += [f"| {k} | {v['difference']:+.4f} | {v['low']:+.4f} to {v['high']:+.4f} |"
                  for k, v in d["bootstrap"].items()]
        check = (f"{d['candidate']} within 0.01 of its members' mean holdout macro-F1: "
                 f"{'yes' if d['candidate_used'] else 'no'}. " if c == "soup" else "")
        lines += ["", f"{check}Ships: **{d['ship']}** ({d['why']})."]
    lines += ["",
              "## 3. After the pick: the models on the holdout and the test split", "",
              f"The bundled model is {rec['bundled']}. The test split is read here for the first "
              "time; nothing below chose anything.", ""]
    lines += [f"- {name}: {m['what']}" for name, m in rec["models"].items()]
    lines.append("")
    for split in ("holdout", "test"):
        lines += [f"**{split.capitalize()}**", "",
                  f"| model | {MODEL_HEAD} | ECE | Brier | log loss |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, m in rec["models"].items():
            r = m[split]
            lines.append(f"| {name} | {_model_cols(r)} | {r['ece']:.3f} | {r['brier']:.3f} | "
                         f"{r['log_loss']:.3f} |")
        lines.append("")
    lines += ["McNemar's exact test on the test split (3-class correct or not):", "",
              "| pair | only the first right | only the second right | p |",
              "|---|---|---|---|"]
    lines += [f"| {k} | {v['only_a_right']} | {v['only_b_right']} | {v['p']:.3g} |"
              for k, v in rec["mcnemar_test"].items()]
    if rec["members_test_spread"]:
        lines += ["", f"The spread of the soup's {len(members)} members on the test split (uncalibrated, "
                  "torch; each a draw that could have shipped):", "",
                  "| figure | mean | SD | lowest | highest |", "|---|---|---|---|---|"]
        for k, v in rec["members_test_spread"].items():
            lines.append(f"| {k} | {v['mean']:.3f} | {v['sd']:.3f} | {v['min']:.3f} | "
                         f"{v['max']:.3f} |")
        lines += ["", "Each member and the soup on the test split:", "",
                  f"| run | {MODEL_HEAD} |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['run']} | {_model_cols(r['test'])} |"
                  for r in rec["soup_runs"] if "test" in r]
    for name, tg in rec["targets"].items():
        lines += ["", f"Targets on the test split, {name}:", "",
                  "| figure | value | target | met |", "|---|---|---|---|"]
        for k, t in tg.items():
            v = f"{t['value']:.3f}" if isinstance(t["value"], float) else t["value"]
            lines.append(f"| {k} | {v} | {t['target']} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def write(out, model, data_root, json_path, md_path, command, limit=0, log=print):
    rec = report(out, model, data_root, limit, log=log)
    Path(json_path).write_text(json.dumps(rec, indent=1) + "\n")
    Path(md_path).write_text(markdown(rec, command))
    log(f"wrote {json_path} and {md_path}")
    return rec
