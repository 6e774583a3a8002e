"""Accuracy of each variant of the model on the published test split, through the library as
a user runs it (scope gate on): the README's table.

Accuracy and the binary figures count the scans that got a label; refused scans are counted
apart (a refusal is not a guess). Binary: normal against pneumonia (bacterial or viral);
sensitivity and specificity for pneumonia; ROC AUC from 1 - p(normal). Each accuracy comes
with a 95% percentile bootstrap interval over the scans (2,000 resamples, fixed seed).
"""
import time

import numpy as np
from scipy.stats import bootstrap
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score

from xray_infer import Classifier
from xray_infer.groundtruth import truth
from xray_infer.model import DEFAULT_MODEL, variant_path
from xray_infer.result import Status

from . import common


def _test_scans(limit):
    folder = common.DATA / "chest_xray" / "test"
    paths = sorted(p for p in folder.rglob("*.jpeg") if truth(p))
    if not paths:
        raise SystemExit(f"no test scans under {folder} (set --data)")
    return paths[::max(1, len(paths) // limit)][:limit] if limit else paths  # every class


def interval(hits):
    """95% percentile bootstrap interval of the mean of ``hits`` (booleans), as a list."""
    ci = bootstrap((np.asarray(hits, float),), np.mean, n_resamples=2000, method="percentile",
                   random_state=0).confidence_interval
    return [float(ci.low), float(ci.high)]


def figures(results):
    """The table's row for one variant's ``results`` on scans with names' truth."""
    scored = [r for r in results if r.status is Status.CLASSIFIED]
    true = [truth(r.source) for r in scored]
    said = [r.label for r in scored]
    sick_true = np.array([t != "normal" for t in true])
    sick_said = np.array([s != "normal" for s in said])
    tn, fp, fn, tp = confusion_matrix(sick_true, sick_said, labels=[False, True]).ravel()
    return {"n": len(results), "labelled": len(scored),
            "refused": sum(r.status is Status.OUT_OF_SCOPE for r in results),
            "failed": sum(r.status is Status.FAILED for r in results),
            "accuracy_3class": accuracy_score(true, said),
            "accuracy_3class_ci": interval(np.array(true) == np.array(said)),
            "accuracy_binary": accuracy_score(sick_true, sick_said),
            "accuracy_binary_ci": interval(sick_true == sick_said),
            "sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp),
            "normals_called_pneumonia": int(fp), "normals": int(tn + fp),
            "auc_binary": roc_auc_score(sick_true,
                                        [1 - r.probabilities["normal"] for r in scored])}


def accuracy(a):
    t0 = time.time()
    paths = _test_scans(a.limit)
    model = a.model or DEFAULT_MODEL
    rows = {}
    for precision in ("float32", "int8", "float16"):
        if not variant_path(model, precision).exists():
            continue
        clf = Classifier(model, precision=precision, providers=a.providers)
        rows[precision] = figures(clf.classify(paths))
    ci = lambda r, k: f"{r[k]:.3f} ({r[k + '_ci'][0]:.3f}-{r[k + '_ci'][1]:.3f})"  # noqa: E731
    table = [[v, r["labelled"], ci(r, "accuracy_3class"), ci(r, "accuracy_binary"),
              f"{r['sensitivity']:.3f}", f"{r['specificity']:.3f}", f"{r['auc_binary']:.3f}",
              r["refused"]] for v, r in rows.items()]
    common.print_table(f"Published test split ({len(paths)} scans), scope gate on", [
        "variant", "labelled", "3-class", "binary", "sensitivity", "specificity", "AUC",
        "refused"], table)
    common.save(a.json, "accuracy", {"rows": rows, "providers": a.providers,
                                     "seconds": round(time.time() - t0)})
