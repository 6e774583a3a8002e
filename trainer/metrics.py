"""Classification metrics (shared by training, export, report, tests and benchmarks), from
scikit-learn."""
import numpy as np
from sklearn import metrics as skm

from xray_infer.spec import softmax  # noqa: F401  (re-exported)

from .classes import CLASS_NAMES, NUM_CLASSES

NORMAL = CLASS_NAMES.index("normal")


def confusion(labels, preds):
    """Rows: true class, columns: predicted class."""
    return skm.confusion_matrix(labels, preds, labels=list(range(NUM_CLASSES)))


def roc_curve(positive, scores):
    """(fpr, tpr), scores higher for the positive class; tied scores make one step."""
    fpr, tpr, _ = skm.roc_curve(np.asarray(positive, bool), scores, drop_intermediate=False)
    return fpr, tpr


def summarize(labels, probs, loss=None):
    """Headline metrics of 3-class probabilities against integer labels."""
    labels = np.asarray(labels)
    preds = probs.argmax(1)
    pneumonia_true = labels != NORMAL
    both = 0 < pneumonia_true.sum() < len(labels)
    out = {
        "n": int(len(labels)),
        "accuracy": float(skm.accuracy_score(labels, preds)),
        "macro_f1": float(skm.f1_score(labels, preds, labels=list(range(NUM_CLASSES)),
                                       average="macro", zero_division=0)),
        "binary_accuracy": float(((preds != NORMAL) == pneumonia_true).mean()),
        "binary_auc": (float(skm.roc_auc_score(pneumonia_true, 1.0 - probs[:, NORMAL]))
                       if both else float("nan")),
        "confusion": confusion(labels, preds).tolist(),
    }
    if loss is not None:
        out["loss"] = float(loss)
    return out


#: Equal-width bins of the top probability for the expected calibration error.
ECE_BINS = 15


def reliability(confidence, correct, bins=ECE_BINS):
    """Per equal-width bin of ``confidence``: (count, mean confidence, accuracy), and the
    expected calibration error (the count-weighted mean gap)."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        if n:
            conf, acc = float(confidence[inside].mean()), float(correct[inside].mean())
            ece += n / len(confidence) * abs(acc - conf)
            rows.append({"bin": b, "n": n, "confidence": conf, "accuracy": acc})
    return rows, ece


def calibration(labels, probs):
    """Expected calibration error of the top probability (``reliability``), the multi-class
    Brier score and the log loss."""
    labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
    _, ece = reliability(probs.max(1), probs.argmax(1) == labels)
    classes = list(range(NUM_CLASSES))
    return {"ece": float(ece),
            "brier": float(skm.brier_score_loss(labels, probs, labels=classes)),
            "log_loss": float(skm.log_loss(labels, np.clip(probs, 1e-7, 1), labels=classes))}


def macro_f1(labels, preds):
    """sklearn's ``f1_score(average="macro", zero_division=0)`` over the classes (``summarize``'s
    figure) from one confusion matrix: the protocol's bootstraps call it thousands of times, and
    sklearn's input checks cost a hundred times the arithmetic (same formula, same floats; tested)."""
    k = NUM_CLASSES
    confusion = np.bincount(np.asarray(labels) * k + np.asarray(preds),
                            minlength=k * k).reshape(k, k)
    denom = confusion.sum(0) + confusion.sum(1)
    per_class = np.divide(2 * np.diag(confusion), denom, out=np.zeros(k), where=denom > 0)
    return float(per_class.mean())
