"""How well the model's probabilities are calibrated, per variant, on the validation split (where
its temperatures were fitted) and the published test split (reported only): the expected
calibration error of the top probability over 15 equal-width bins, and a reliability diagram.

Scored through the library with the scope gate off, so that every scan counts.
"""
import time
from pathlib import Path

from trainer.dataset import load_splits
from trainer.metrics import ECE_BINS as BINS, reliability
from xray_infer import Classifier
from xray_infer.model import DEFAULT_MODEL, variant_path
from xray_infer.result import Status

from . import common


def _split(clf, records):
    names = list(clf.class_names)
    results = clf.classify([r.path for r in records])
    pairs = [(max(r.probabilities.values()), r.label == names[rec.label])
             for r, rec in zip(results, records) if r.status is Status.CLASSIFIED]
    rows, ece = reliability(*zip(*pairs))
    return {"n": len(records), "scored": len(pairs), "ece": ece, "bins": rows}


def plot(found, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(found), figsize=(4.2 * len(found), 4), squeeze=False)
    for ax, (variant, splits) in zip(axes[0], found.items()):
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
        for split, record in splits.items():
            bins = record["bins"]
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o",
                    label=f"{split} (ECE {record['ece']:.3f}, n={record['scored']})")
        ax.set(title=variant, xlabel="top probability (bin mean)", ylabel="accuracy",
               xlim=(0.3, 1.01), ylim=(0, 1.02))
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def calibration(a):
    t0 = time.time()
    model = a.model or DEFAULT_MODEL
    splits = load_splits(common.DATA)
    records = {"validation": splits["val"], "test": splits["test"]}
    if a.limit:
        records = {k: v[::max(1, len(v) // a.limit)][:a.limit] for k, v in records.items()}
    found = {}
    for precision in ("float32", "int8"):
        if not variant_path(model, precision).exists():
            continue
        clf = Classifier(model, precision=precision, scope=False, providers=a.providers)
        found[precision] = {split: _split(clf, recs) for split, recs in records.items()}
    common.print_table(f"Expected calibration error, top probability, {BINS} bins (scope off)",
                       ["variant", "split", "scored", "ECE"],
                       [[v, s, r["scored"], f"{r['ece']:.3f}"]
                        for v, splits in found.items() for s, r in splits.items()])
    common.save(a.json, "calibration", {"bins": BINS, "results": found,
                                        "seconds": round(time.time() - t0)})
    if a.out:
        plot(found, Path(a.out))
        print(f"wrote {a.out}")
