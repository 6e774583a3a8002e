"""docs/experiments.md and its plots, from experiments folders and the shipped model."""
import json
from pathlib import Path

import numpy as np

from .dataset import CLASS_NAMES, VAL_SPLITS, parse_name
from .runs import finished
from .metrics import NORMAL, roc_curve
from .model import mmac
from .train import RunConfig

METRICS = [("val", "accuracy"), ("val", "macro_f1"), ("val", "loss"), ("test", "accuracy"),
           ("test", "macro_f1"), ("test", "binary_accuracy"), ("test", "binary_auc")]
HEAD = ["val acc", "val macro-F1", "val loss", "test acc", "test macro-F1",
        "test normal-vs-pneumonia acc", "test AUC"]


def load_grid(grid):
    """(summary, {run name: [results]}) of an experiments folder."""
    grid = Path(grid)
    summary_path = grid / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    runs = {}
    for _, r in finished(grid):
        runs.setdefault(r["config"]["name"], []).append(r)
    return summary, runs


def _fmt(values, digits=3):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


GROUP_ORDER = ("base", "padding", "dropout", "batch_norm", "stride", "training", "combination",
               "hyperparameters", "candidates", "comparisons", "superseded", "runs", "earlier")


def _changes(cfg, base=None):
    """The fields in which a run's config differs from ``base`` (default: RunConfig()), as text."""
    base = RunConfig.from_dict(base).to_dict() if base else RunConfig().to_dict()
    cfg = RunConfig.from_dict(cfg).to_dict()
    out = []
    for k, v in cfg["net"].items():
        if v != base["net"].get(k):
            out.append(f"{k}={v}")
    for k, v in cfg.items():
        if k not in ("net", "name", "seed") and v != base[k]:
            out.append(f"{k}={v}")
    return ", ".join(out) or "(base)"


def table(runs, names, base=None):
    lines = ["| run | differs from base | seeds | MMAC | " + " | ".join(HEAD)
             + " | best epoch | train s |", "|" + "---|" * (len(HEAD) + 6)]
    for n in names:
        rs = runs[n]
        cells = [_fmt([r[s].get(m) for r in rs]) for s, m in METRICS]
        cost = mmac(RunConfig.from_dict(rs[0]["config"]).net)
        lines.append(f"| {n} | {_changes(rs[0]['config'], base)} | {len(rs)} | {cost:,.0f} | "
                     + " | ".join(cells)
                     + f" | {_fmt([r['best_epoch'] for r in rs], 0)} | "
                     f"{_fmt([r['train_seconds'] for r in rs], 0)} |")
    return "\n".join(lines)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    """Write a figure the one way every report figure is written, and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _plt().close(fig)


def plot_curves(runs, names, path, title):
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for n in names:
        h = runs[n][0]["history"]
        ep = [e["epoch"] for e in h]
        line, = axes[0].plot(ep, [e["train_loss"] for e in h], label=n)
        axes[1].plot(ep, [e["val_loss"] for e in h], color=line.get_color())
        axes[2].plot(ep, [e["val_macro_f1"] for e in h], color=line.get_color())
    for ax, t in zip(axes, ("train loss", "validation loss", "validation macro-F1")):
        ax.set_title(t)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title} (seed {runs[names[0]][0]['config']['seed']})")
    _save(fig, path)


def plot_confusions(cms, path):
    plt = _plt()
    fig, axes = plt.subplots(1, len(cms), figsize=(4.5 * len(cms), 4))
    for ax, (title, cm) in zip(np.atleast_1d(axes), cms.items()):
        cm = np.asarray(cm)
        ax.imshow(cm / cm.sum(1, keepdims=True), cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if cm[i, j] > cm[i].sum() / 2 else "black")
        ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES)
        ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
    _save(fig, path)


def plot_rocs(curves, path):
    """curves: {title: (labels, probs)}; normal-vs-pneumonia and one-vs-rest per class."""
    from sklearn.metrics import roc_auc_score as auc
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4.5))
    for ax, (title, (labels, probs)) in zip(np.atleast_1d(axes), curves.items()):
        labels, probs = np.asarray(labels), np.asarray(probs)
        pos, score = labels != NORMAL, 1 - probs[:, NORMAL]
        fpr, tpr = roc_curve(pos, score)
        ax.plot(fpr, tpr, lw=2, label=f"pneumonia vs normal (AUC {auc(pos, score):.3f})")
        for k, name in enumerate(CLASS_NAMES):
            fpr, tpr = roc_curve(labels == k, probs[:, k])
            ax.plot(fpr, tpr, lw=1, ls="--",
                    label=f"{name} vs rest (AUC {auc(labels == k, probs[:, k]):.3f})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(title)
        ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


#: Test-split scans shipped as samples: a normal, a bacterial and a viral pneumonia.
HEATMAP_SAMPLES = ("IM-0001-0001.jpeg", "person100_bacteria_475.jpeg", "person10_virus_35.jpeg")


def plot_heatmaps(model_path, path):
    """Overlays (as ``xray-infer classify --heatmaps`` writes them) for three sample scans."""
    from xray_infer import Classifier
    from xray_infer.decode import read_image
    from xray_infer.heatmap import caption, overlay
    samples = Path(__file__).resolve().parent.parent / "xray_infer" / "samples"
    paths = [str(samples / name) for name in HEATMAP_SAMPLES]
    results = Classifier(model_path, providers=["CPUExecutionProvider"],
                         heatmaps=True).classify(paths)
    plt = _plt()
    fig, axes = plt.subplots(1, len(paths), figsize=(4 * len(paths), 4.3))
    for ax, p, r in zip(axes, paths, results):
        scan = read_image(p)
        ax.imshow(overlay(scan.pixels, scan.maxval, r.heatmap, caption(r))[:, :, ::-1])
        name = Path(p).name
        label, _ = parse_name("PNEUMONIA" if name.startswith("person") else "NORMAL", name)
        ax.set_title(f"{name} (truth: {CLASS_NAMES[label]})", fontsize=9)
        ax.axis("off")
    _save(fig, path)


def _model_probs(model_path):
    """(spec, {split: (labels, probs)}) of an exported model on validation and test."""
    from xray_infer.model import load_model

    from .arrays import cached_arrays
    from .dataset import load_splits
    from .export import ort_logits
    from .metrics import softmax
    sess, spec = load_model(model_path, providers=["CPUExecutionProvider"], precision="float32")
    cfg = RunConfig.from_dict(spec.provenance["run_configs"][0])
    splits = load_splits(scheme=cfg.val_split)
    out = {}
    for split in ("val", "test"):
        x, y = cached_arrays(splits[split], spec.input_size, spec.mean, spec.std)
        out[split] = (y, softmax(ort_logits(sess, x)))
    return spec, out


def load_archive(path):
    """{grid tag: (summary, {run name: [results]})} from an ``experiments.json`` this report
    wrote: grids whose run folders are no longer at hand are reported from it."""
    if not path or not Path(path).exists():
        return {}
    return {tag: (g["summary"], g["runs"]) for tag, g in json.loads(Path(path).read_text()).items()}


def _intro():
    return ["# Experiments", "",
            "Generated by `python -m trainer report` from the experiment folders below; every "
            "figure here comes from those runs. Selection uses the validation split only (patients "
            "carved out of the published train split, 15% of each class, by one of the schemes of "
            "`trainer/dataset.py`: "
            + "; ".join(f"`{k}`, {v}" for k, v in VAL_SPLITS.items())
            + "); the published test split is evaluated once per finished run, for reporting.", "",
            "Defaults (`trainer.train.RunConfig`, `trainer.model.NetConfig`): "
            f"`{RunConfig().to_dict()}`. Images go through the library's own preprocessing "
            "kernel; AdamW with a one-cycle schedule, label smoothing 0.05, inverse-frequency class "
            "weights, augmentation (small affine, gamma, contrast, brightness; no flips). The "
            "checkpoint kept from each run is its epoch with the best validation macro-F1.", ""]


def seed_record(runs):
    """Per run with its probabilities (folders, not the archive): test figures and the test
    ECE after a temperature fitted on the run's own validation probabilities, as export
    fits it; and per configuration with several seeds, their mean and spread. Markdown lines."""
    from .dataset import load_splits
    from .export import fit_temperature
    from .metrics import reliability, softmax
    rows = [(n, r) for n, rs in runs.items() for r in sorted(rs, key=lambda r: r["config"]["seed"])
            if "val_probs" in r and "test_probs" in r]
    if not rows:
        return []
    labels = {}
    md = ["Each run's test figures with the 234 normal scans' errors and the expected calibration "
          "error (15 bins of the top probability) after a temperature fitted on that run's "
          "validation probabilities; the last rows: mean ± standard deviation over seeds.", "",
          "| run | seed | val macro-F1 | test acc | test normal-vs-pneumonia acc | normals called "
          "pneumonia | test AUC | temperature | test ECE |", "|---|---|---|---|---|---|---|---|---|"]
    per_config = {}
    for name, r in rows:
        scheme = RunConfig.from_dict(r["config"]).val_split
        if scheme not in labels:
            splits = load_splits(scheme=scheme)
            labels[scheme] = {s: np.array([rec.label for rec in splits[s]]) for s in ("val", "test")}
        y = labels[scheme]
        val_logits = np.log(np.clip(np.array(r["val_probs"]), 1e-5, 1))
        test_logits = np.log(np.clip(np.array(r["test_probs"]), 1e-5, 1))
        t = fit_temperature(val_logits, y["val"])
        p = softmax(test_logits / t)
        _, ece = reliability(p.max(1), p.argmax(1) == y["test"])
        cm = np.array(r["test"]["confusion"])
        fig = {"val macro-F1": r["val"]["macro_f1"], "test acc": r["test"]["accuracy"],
               "binary": r["test"]["binary_accuracy"],
               "normals": float(cm[NORMAL].sum() - cm[NORMAL, NORMAL]),
               "auc": r["test"]["binary_auc"], "t": t, "ece": ece}
        per_config.setdefault(name, []).append(fig)
        md.append(f"| {name} | {r['config']['seed']} | {fig['val macro-F1']:.3f} | "
                  f"{fig['test acc']:.3f} | {fig['binary']:.3f} | {fig['normals']:.0f} | "
                  f"{fig['auc']:.3f} | {t:.3f} | {ece:.3f} |")
    for name, figs in per_config.items():
        if len(figs) > 1:
            cells = [_fmt([f[k] for f in figs], 0 if k == "normals" else 3)
                     for k in ("val macro-F1", "test acc", "binary", "normals", "auc", "t", "ece")]
            md.append(f"| {name} | {len(figs)} seeds | " + " | ".join(cells) + " |")
    return md + [""]


def _grid_section(tag, summary, runs, img):
    """Markdown lines for one grid: its selection, and per group a table and learning curves."""
    first = next(iter(runs.values()))[0]
    size = first["config"]["net"]["input_size"]
    scheme = RunConfig.from_dict(first["config"]).val_split
    md = [f"## `{tag}`: {len(sum(runs.values(), []))} runs on {first.get('device', '?')}, "
          f"{size} px, `{scheme}` validation split", ""]
    if summary.get("selected"):
        md += [f"Selected on validation: **{summary['selected']}** "
               f"({summary['selection']}).", ""]
    elif summary.get("selection"):
        md += [f"Selection: {summary['selection']}.", ""]
        if summary.get("failed"):
            md += ["Failed runs: " + "; ".join(summary["failed"]), ""]
    groups = {}
    for name in runs:
        # A folder's summary covers its latest grid invocation; runs it does not name
        # come from an earlier one whose later phases built on another best run.
        group = summary.get("runs", {}).get(name, {}).get("group",
                                                           "earlier" if summary else "runs")
        groups.setdefault(group, []).append(name)
    base = ["base"] if "base" in runs else []
    base_cfg = runs["base"][0]["config"] if base else None
    if base_cfg:
        md += [f"Base of this grid: `{_changes(base_cfg)}` changed from the defaults below; "
               f"\"differs from base\" is relative to it.", ""]
    for group in sorted(groups, key=lambda g: GROUP_ORDER.index(g)
                        if g in GROUP_ORDER else len(GROUP_ORDER)):
        names = groups[group]
        shown = names if group in ("base", "runs", "earlier") else base + names
        md += [f"### {group}", ""]
        if group == "earlier":
            md += ["Runs of an earlier invocation of this grid (with fewer seeds), whose "
                   "combination and hyperparameter phases started from a different best "
                   "run; kept because they are real results, not part of the latest "
                   "selection.", ""]
        md += [table(runs, shown, base_cfg), ""]
        if group == "candidates":
            md += seed_record({n: runs[n] for n in names})
        png = img / f"{tag}-{group}.png"
        plot_curves(runs, shown, png, f"{tag}: {group}")
        md += [f"![{group} learning curves](img/{png.name})", ""]
    return md


def _compact(summary, runs):
    """What experiments.json keeps of a grid."""
    return {"summary": summary,
            "runs": {n: [{k: r[k] for k in ("config", "val", "test", "best_epoch",
                                            "train_seconds", "device", "history")
                          if k in r} for r in rs] for n, rs in runs.items()}}


def _validation_vs_test(compact, img):
    """How well validation macro-F1 predicts test accuracy, per validation split: lines and a
    scatter plot."""
    md = ["## Validation against test", "",
          "How well the selection metric predicts the reported one, per validation split "
          "(Pearson correlation between a run's validation macro-F1 and its test accuracy; "
          "runs validated on different splits are not pooled):", "",
          "| validation split | grids | runs | correlation |", "|---|---|---|---|"]
    by_scheme = {}
    for tag, grid in compact.items():
        for rs in grid["runs"].values():
            for r in rs:
                scheme = RunConfig.from_dict(r["config"]).val_split
                by_scheme.setdefault(scheme, {}).setdefault(tag, []).append(r)
    for scheme, tags in sorted(by_scheme.items()):
        rs = [r for g in tags.values() for r in g]
        v = [r["val"]["macro_f1"] for r in rs]
        t = [r["test"]["accuracy"] for r in rs]
        corr = f"{np.corrcoef(v, t)[0, 1]:.2f}" if len(rs) >= 3 else "-"
        md.append(f"| {scheme} | {', '.join(f'`{g}`' for g in tags)} | {len(rs)} | "
                  f"{corr} |")
    md += ["", "![validation vs test](img/val-vs-test.png)", ""]
    plt = _plt()
    fig, axes = plt.subplots(1, len(by_scheme), figsize=(5 * len(by_scheme), 4.3),
                             squeeze=False)
    for ax, (scheme, tags) in zip(axes[0], sorted(by_scheme.items())):
        for tag, rs in tags.items():
            ax.scatter([r["val"]["macro_f1"] for r in rs],
                       [r["test"]["accuracy"] for r in rs], label=tag)
        ax.set_title(f"validation split: {scheme}")
        ax.set_xlabel("validation macro-F1 (selection metric)")
        ax.set_ylabel("test accuracy (reported only)")
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, img / "val-vs-test.png")
    return md


def _shipped_model(model, img):
    """The shipped model's section: metrics, confusion matrices, ROC curves, heatmaps."""
    spec, probs = _model_probs(model)
    m = spec.metrics
    md = ["## The shipped model", "",
          f"`{Path(model).name}`, version {spec.model_version}: "
          f"{' + '.join(f'`{r}`' for r in spec.provenance.get('runs', []))} "
          f"({spec.provenance.get('selection')}); temperatures "
          f"{', '.join(f'{t:.3f}' for t in m['temperatures'])} fitted on validation. "
          f"Command: `{spec.provenance.get('command')}`.", "",
          "| split | n | accuracy | macro-F1 | normal-vs-pneumonia accuracy | AUC |",
          "|---|---|---|---|---|---|"]
    for split in ("val", "test"):
        s = m[split]
        md.append(f"| {split} | {s['n']} | {s['accuracy']:.4f} | {s['macro_f1']:.4f} | "
                  f"{s['binary_accuracy']:.4f} | {s['binary_auc']:.4f} |")
    plot_confusions({f"{split} (n={m[split]['n']})": m[split]["confusion"]
                     for split in ("val", "test")}, img / "shipped-confusion.png")
    plot_rocs({f"{split}": probs[split] for split in ("val", "test")},
              img / "shipped-roc.png")
    md += ["", "![confusion matrices](img/shipped-confusion.png)", "",
           "![ROC curves](img/shipped-roc.png)", ""]
    if spec.heatmap_output:
        plot_heatmaps(model, img / "heatmaps.png")
        md += ["Class activation maps of the shipped model for three test scans shipped as "
               "samples (a normal, a bacterial and a viral pneumonia):", "",
               "![heatmaps](img/heatmaps.png)", ""]
    cm = np.asarray(m["test"]["confusion"])
    md += ["Where it fails on the test split: "
           f"{cm[0, 1] + cm[0, 2]} of {cm[0].sum()} normal scans are called pneumonia "
           f"({cm[0, 2]} viral, {cm[0, 1]} bacterial); {cm[1, 2]} of {cm[1].sum()} bacterial "
           f"are called viral and {cm[2, 1]} of {cm[2].sum()} viral are called bacterial; "
           f"{cm[1, 0] + cm[2, 0]} pneumonia scans are called normal.", ""]
    return md


def write_report(grids, out_dir, model=None, notes=None, archive=None):
    """Write ``<out_dir>/experiments.md`` (+ img/, experiments.json) from experiment folders,
    and from the grids of ``archive`` (an earlier experiments.json) not among the folders."""
    out_dir = Path(out_dir)
    img = out_dir / "img"
    img.mkdir(parents=True, exist_ok=True)
    md, compact = _intro(), {}
    loaded = {Path(g).name: load_grid(g) for g in grids}
    archived = {t: g for t, g in load_archive(archive).items() if t not in loaded}
    for tag, (summary, runs) in {**archived, **loaded}.items():
        if runs:
            md += _grid_section(tag, summary, runs, img)
            compact[tag] = _compact(summary, runs)
    if sum(len(rs) for grid in compact.values() for rs in grid["runs"].values()) >= 3:
        md += _validation_vs_test(compact, img)
    if model and Path(model).exists():
        md += _shipped_model(model, img)
    if notes and Path(notes).exists():
        md += [Path(notes).read_text().strip(), ""]
    (out_dir / "experiments.md").write_text("\n".join(md))
    (out_dir / "experiments.json").write_text(json.dumps(compact))
    return out_dir / "experiments.md"
