"""The figures of docs/experiments.md (``report``): learning curves, confusion matrices, ROC
curves and class-activation maps, each written the same way."""
from pathlib import Path

import numpy as np

from .dataset import CLASS_NAMES, parse_name
from .metrics import NORMAL, roc_curve


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path):
    """Write a figure the one way every report figure is written, and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    pyplot().close(fig)


def plot_curves(runs, names, path, title):
    plt = pyplot()
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
    save_figure(fig, path)


def plot_confusions(cms, path):
    plt = pyplot()
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
    save_figure(fig, path)


def plot_rocs(curves, path):
    """curves: {title: (labels, probs)}; normal-vs-pneumonia and one-vs-rest per class."""
    from sklearn.metrics import roc_auc_score as auc
    plt = pyplot()
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
    save_figure(fig, path)


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
    plt = pyplot()
    fig, axes = plt.subplots(1, len(paths), figsize=(4 * len(paths), 4.3))
    for ax, p, r in zip(axes, paths, results):
        scan = read_image(p)
        ax.imshow(overlay(scan.pixels, scan.maxval, r.heatmap, caption(r))[:, :, ::-1])
        name = Path(p).name
        label, _ = parse_name("PNEUMONIA" if name.startswith("person") else "NORMAL", name)
        ax.set_title(f"{name} (truth: {CLASS_NAMES[label]})", fontsize=9)
        ax.axis("off")
    save_figure(fig, path)
