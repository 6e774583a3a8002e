"""The adult head: a logistic regression on the classifier layer's input (the pooled features)
that tells an adult's chest film from a young child's, computed inside the exported graph as
one more output, ``adult_score`` (a logit: one dot product and one addition per image).

Outlier exposure (Hendrycks et al. 2019): known outliers, adult frontal films of another
hospital (``adult-dev/``, NIH ChestX-ray14), are the negatives; the training split's films
(validation patients held out) are the positives, with the children of the adults' hospital
(``peds-other-dev/``), so that the head cannot tell ages apart by telling hospitals apart (each
of those children is reported as scored by a head fitted without it). All are seen as they are
and under the jitter the model trains with (``train.augment``, ``acquisition_jitter``,
``presentation_jitter``: proportions, sharpness, noise, window, gamma, bit depth, JPEG), so
that how a hospital exports a film is no cue. A share of the adult patients
(``held_out_adult``) is kept out of the fit for the development figures. The regularisation
strength is chosen by patient-grouped cross-validation of the fit set; the threshold is the
score that ``VALIDATION_KEEP`` of the validation split stays under. No test image, no
out-of-scope set and no held-out adult sets anything.
"""
import csv
import hashlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from .scope import feature_tensor, features

#: The output the head adds to the graph: (N,) logits, higher = more like an adult's film.
ADULT_OUTPUT = "adult_score"
#: Share of the validation split whose score stays under the threshold.
VALIDATION_KEEP = 0.995
#: Jittered copies per image in the fit: children, adults (fewer adults, more views of each).
COPIES = {"children": 1, "adults": 6}
#: Share of the children's weight in the fit carried by another hospital's children
#: (``peds-other-dev``): without them the head tells the hospitals apart, not the ages, and
#: refused every one of them (docs/scope.md). Fixed, not tuned.
OTHER_CHILDREN_WEIGHT = 0.2
#: Regularisation strengths tried (inverse, on standardised features).
C_GRID = tuple(float(c) for c in np.logspace(-4, 0, 9))
FOLDS = 5
SEED = 0
#: Agreement between the graph's score and the same formula in float64 on its features.
PARITY_ATOL = 1e-3
_PREFIX = "adult/"
#: peds-other-dev's age bands, in whole years (inclusive).
AGE_BANDS = ((2, 5), (6, 11), (12, 17))


class Film(NamedTuple):
    """One film of ``adult-dev`` or ``peds-other-dev``: what ``arrays.cached_arrays`` reads
    (``path``, ``label``) and what the figures are taken apart by."""
    path: str
    label: int
    patient: str
    age: int
    view: str


def films(folder):
    """The films listed in ``folder/index.csv`` (NIH: the first 8 digits of the original name
    are the patient)."""
    folder = Path(folder)
    with open(folder / "index.csv", newline="") as f:
        return [Film(str(folder / row["file"]), -1, row["original_name"][:8],
                     int(row["age_years"]), row["view"].upper()) for row in csv.DictReader(f)]


def held_out_adult(patient):
    """True for the adult patients kept out of the fit: three in ten, by a hash of the patient
    id, so anyone can recompute the split (tests pick their adult films from it)."""
    return int(hashlib.sha256(patient.encode()).hexdigest(), 16) % 10 < 3


def jittered(x, copies, seed, mean, std, batch_size=256):
    """``copies`` jittered versions of the normalised float32 (N, 1, S, S) array ``x``, one
    after another: the model's training jitter, all of it, at strength 1."""
    import torch

    from .train import acquisition_jitter, augment, presentation_jitter
    gen = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for _ in range(copies):
            for i in range(0, len(x), batch_size):
                b = torch.from_numpy(np.array(x[i:i + batch_size], np.float32))  # a copy: writable
                b = augment(b, gen, mean, std)
                b = acquisition_jitter(b, gen, mean, std)
                out.append(presentation_jitter(b, gen, mean, std).numpy())
    return np.concatenate(out) if out else np.empty((0, *x.shape[1:]), np.float32)


class Head(NamedTuple):
    """``score(f) = f @ weights + bias`` on raw features, and how it was chosen."""
    weights: np.ndarray
    bias: float
    c: float
    cv_log_loss: "float | None"

    def score(self, f):
        return f @ self.weights + self.bias


class FitSet(NamedTuple):
    """Features (plain and jittered copies stacked), their patients and total weights."""
    children: np.ndarray
    child_groups: np.ndarray
    others: np.ndarray
    other_groups: np.ndarray
    adults: np.ndarray
    adult_groups: np.ndarray

    def without_other(self, patient):
        keep = self.other_groups != patient
        return self._replace(others=self.others[keep], other_groups=self.other_groups[keep])

    def arrays(self):
        """(x, y, groups, sample weights): adults weigh as much as children, and the other
        hospital's children ``OTHER_CHILDREN_WEIGHT`` of the children's half."""
        parts = ((self.children, self.child_groups, 0, 0.5 * (1 - OTHER_CHILDREN_WEIGHT)),
                 (self.others, self.other_groups, 0, 0.5 * OTHER_CHILDREN_WEIGHT),
                 (self.adults, self.adult_groups, 1, 0.5))
        parts = [p for p in parts if len(p[0])]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([np.full(len(p[0]), p[2]) for p in parts])
        groups = np.concatenate([np.char.add(f"{i}:", np.asarray(p[1], str))
                                 for i, p in enumerate(parts)])
        w = np.concatenate([np.full(len(p[0]), p[3] / len(p[0])) for p in parts])
        return x, y, groups, w / w.mean()


def fit_head(fit_set, c=None):
    """The weighted logistic regression on standardised features, folded back onto raw
    features; its C chosen from ``C_GRID`` by patient-grouped cross-validation log loss unless
    ``c`` is given."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    x, y, groups, w = fit_set.arrays()
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    weights = {"logisticregression__sample_weight": w}
    cv_loss = None
    if c is None:
        search = GridSearchCV(pipe, {"logisticregression__C": list(C_GRID)},
                              scoring="neg_log_loss", cv=GroupKFold(FOLDS), n_jobs=1)
        search.fit(x, y, groups=groups, **weights)
        c, cv_loss = search.best_params_["logisticregression__C"], -search.best_score_
    scaler, lr = pipe.set_params(logisticregression__C=c).fit(x, y, **weights)
    w = lr.coef_[0] / scaler.scale_
    b = float(lr.intercept_[0] - (scaler.mean_ / scaler.scale_) @ lr.coef_[0])
    return Head(w, b, float(c), None if cv_loss is None else float(cv_loss))


def add_adult_output(proto, head):
    """``proto`` with the ``adult_score`` output: features @ w + b."""
    g, p = proto.graph, _PREFIX
    g.initializer.extend([
        numpy_helper.from_array(head.weights.astype(np.float32)[:, None], p + "weights"),
        numpy_helper.from_array(np.array([head.bias], np.float32), p + "bias"),
        numpy_helper.from_array(np.array([1], np.int64), p + "axis1")])
    g.node.extend([
        helper.make_node("MatMul", [feature_tensor(proto), p + "weights"], [p + "dot"],
                         name=p + "dot"),
        helper.make_node("Add", [p + "dot", p + "bias"], [p + "logit"], name=p + "logit"),
        helper.make_node("Squeeze", [p + "logit", p + "axis1"], [ADULT_OUTPUT], name=p + "score")])
    g.output.append(helper.make_tensor_value_info(ADULT_OUTPUT, TensorProto.FLOAT, ["batch"]))
    return proto


def head_nodes(proto):
    """Names of the head's nodes (kept in float32 in the float16 variant, with the gate's)."""
    return [n.name for n in proto.graph.node if n.name.startswith(_PREFIX)]


def _share(mask):
    return {"n": int(len(mask)), "share": float(np.mean(mask)) if len(mask) else None}


def _leave_one_out(fit_set, head, others, f_others, f_val):
    """Each of the other hospital's children scored by a head fitted without it (same C, same
    threshold rule), less that head's threshold: the shipped head saw them all, so only these
    say how it treats a child of a hospital it never saw."""
    margins = np.empty(len(others))
    for i, child in enumerate(others):
        alone = fit_head(fit_set.without_other(child.patient), head.c)
        margins[i] = alone.score(f_others[i:i + 1])[0] - np.quantile(alone.score(f_val),
                                                                     VALIDATION_KEEP)
    return margins


def _with_output(proto, head, x_val, s_val):
    """A copy of ``proto`` with the head's output, checked against its float64 formula on
    real validation images; (the copy, the largest difference)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    add_adult_output(out, head)
    sess = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    check = np.ascontiguousarray(np.asarray(x_val[:64], np.float32))
    got = sess.run([ADULT_OUTPUT], {sess.get_inputs()[0].name: check})[0].astype(np.float64)
    parity = float(np.max(np.abs(got - s_val[:64])))
    if parity > PARITY_ATOL:
        raise RuntimeError(f"the adult score output disagrees with its float64 formula: "
                           f"{parity:.1e} > {PARITY_ATOL:.0e}")
    return out, parity


def fit(proto, train, train_patients, val, data_root, size, mean, std, test=None,
        fullres=None):
    """Fit the head on the model ``proto`` (with its feature tensor) and set its threshold.

    ``train`` / ``val`` = (x, labels) of the model's training and validation splits,
    ``train_patients`` their patient ids; ``data_root`` holds ``adult-dev`` and
    ``peds-other-dev``, preprocessed at the model's input ``size``, ``mean`` and ``std``.
    ``test`` and ``fullres`` (arrays), when given, are only reported: the share kept.
    Returns (the proto with the ``adult_score`` output, the spec's ``adult_head`` record).
    """
    from .arrays import cached_arrays
    data_root = Path(data_root)
    arrays = lambda fs: cached_arrays(fs, size, mean, std)[0]  # noqa: E731
    adults = films(data_root / "adult-dev")
    fit_adults = [a for a in adults if not held_out_adult(a.patient)]
    held = [a for a in adults if held_out_adult(a.patient)]
    others = films(data_root / "peds-other-dev")
    x_train, x_adults, x_others = np.asarray(train[0]), arrays(fit_adults), arrays(others)
    reported = {name: x for name, x in (("test_kept", test), ("fullres_kept", fullres))
                if x is not None}
    (f_kids, f_kids_jit, f_adults, f_adults_jit, f_others, f_others_jit, f_val, f_held,
     *f_reported) = features(
        proto, x_train, jittered(x_train, COPIES["children"], SEED, mean, std),
        x_adults, jittered(x_adults, COPIES["adults"], SEED + 1, mean, std),
        x_others, jittered(x_others, COPIES["adults"], SEED + 2, mean, std),
        np.asarray(val[0]), arrays(held), *reported.values())
    copies = lambda ids, n: np.tile(np.asarray(ids, str), 1 + n)  # noqa: E731
    fit_set = FitSet(np.concatenate([f_kids, f_kids_jit]),
                     copies(train_patients, COPIES["children"]),
                     np.concatenate([f_others, f_others_jit]),
                     copies([c.patient for c in others], COPIES["adults"]),
                     np.concatenate([f_adults, f_adults_jit]),
                     copies([a.patient for a in fit_adults], COPIES["adults"]))
    head = fit_head(fit_set)
    s_val = head.score(f_val)
    threshold = float(np.quantile(s_val, VALIDATION_KEEP))
    out, parity = _with_output(proto, head, val[0], s_val)

    refused = lambda f: head.score(f) > threshold  # noqa: E731
    kept_alone = _leave_one_out(fit_set, head, others, f_others, f_val) <= 0
    held_refused, views = refused(f_held), np.array([a.view for a in held])
    ages = np.array([c.age for c in others])
    development = {
        "held_out_adults_refused": {"all": _share(held_refused),
                                    **{v: _share(held_refused[views == v]) for v in ("PA", "AP")}},
        "peds_other_kept_leave_one_out": {
            f"{lo}-{hi}": _share(kept_alone[(ages >= lo) & (ages <= hi)]) for lo, hi in AGE_BANDS},
        "fit_adults_refused": _share(refused(f_adults)),
        **{name: _share(~refused(f)) for name, f in zip(reported, f_reported)},
    }
    record = {
        "method": "logistic regression on the classifier layer's input features, adult films "
                  "of another hospital as negatives (outlier exposure, Hendrycks et al. 2019), "
                  "every set also under the model's training jitter",
        "threshold": threshold,
        "threshold_rule": f"{VALIDATION_KEEP:.1%} of the validation split scores at or under it",
        "validation_kept": float((s_val <= threshold).mean()),
        "fitted_on": (f"{len(f_kids)} training-split images and {len(others)} children of "
                      f"another hospital (peds-other-dev, {OTHER_CHILDREN_WEIGHT:.0%} of the "
                      f"children's weight) against {len(fit_adults)} adult frontal films "
                      f"(adult-dev; NIH ChestX-ray14), each also in {COPIES['children']}, "
                      f"{COPIES['adults']} and {COPIES['adults']} jittered copies"),
        "held_out": (f"{len(held)} adult patients, sha256(patient id) mod 10 < 3 "
                     f"(trainer.adult_head.held_out_adult)"),
        "regularisation": {"C": head.c, "grid": list(C_GRID), "cv_log_loss": head.cv_log_loss,
                           "folds": f"{FOLDS} patient-grouped folds of the fit set"},
        "threshold_set_on": f"{len(s_val)} validation-split images",
        "development": development,
        "caveat": "one adult hospital (NIH Clinical Center); development figures, not a final "
                  "refusal rate",
        "parity_max_abs_diff": parity,
    }
    return out, record
