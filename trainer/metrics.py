"""Classification metrics in NumPy (shared by training, export, tests and benchmarks)."""
import numpy as np

from .dataset import CLASS_NAMES

NORMAL = CLASS_NAMES.index("normal")


def softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confusion(labels, preds, n=len(CLASS_NAMES)):
    """Rows: true class, columns: predicted class."""
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(preds)), 1)
    return m


def macro_f1(cm):
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(0), out=np.zeros_like(tp), where=cm.sum(0) > 0)
    recall = np.divide(tp, cm.sum(1), out=np.zeros_like(tp), where=cm.sum(1) > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


def roc_curve(positive, scores):
    """(fpr, tpr) over all thresholds, scores higher for the positive class."""
    positive = np.asarray(positive, bool)
    order = np.argsort(-np.asarray(scores), kind="stable")
    pos = positive[order]
    tps = np.concatenate([[0], np.cumsum(pos)])
    fps = np.concatenate([[0], np.cumsum(~pos)])
    return fps / max(fps[-1], 1), tps / max(tps[-1], 1)


def roc_auc(positive, scores):
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    positive = np.asarray(positive, bool)
    scores = np.asarray(scores, float)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def summarize(labels, probs, loss=None):
    """Headline metrics of 3-class probabilities against integer labels."""
    labels = np.asarray(labels)
    preds = probs.argmax(1)
    cm = confusion(labels, preds)
    pneumonia_true = labels != NORMAL
    pneumonia_score = 1.0 - probs[:, NORMAL]
    out = {
        "n": int(len(labels)),
        "accuracy": float((preds == labels).mean()),
        "macro_f1": macro_f1(cm),
        "binary_accuracy": float(((preds != NORMAL) == pneumonia_true).mean()),
        "binary_auc": roc_auc(pneumonia_true, pneumonia_score),
        "confusion": cm.tolist(),
    }
    if loss is not None:
        out["loss"] = float(loss)
    return out
