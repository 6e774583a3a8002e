"""The stress test of the v4 protocol: how many labels flip when a film is changed the way real
exports change it.

Applied to the model's inputs (normalised arrays at the model's size), one image at a time, in
the 0-1 range the normalisation came from. A label flips when the argmax on the changed film
differs from the argmax on the film as it was; the share is taken apart for normal films (the
error that dominates the test split is normals called pneumonia) and for pneumonias.
"""
import cv2
import numpy as np

from .metrics import NORMAL


def _sharpen(v):
    return v + 1.0 * (v - cv2.GaussianBlur(v, (0, 0), 1.0))


def _window(v):
    lo, hi = np.percentile(v, (1, 99))
    return (v - lo) / max(hi - lo, 1e-6)


def _jpeg(v, quality=50):
    ok, buf = cv2.imencode(".jpg", np.round(np.clip(v, 0, 1) * 255).astype(np.uint8),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255


def _half_resolution(v):
    h, w = v.shape
    small = cv2.resize(v, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


#: The changes, by name: each takes and returns one float32 image in 0-1 (clipped after).
TRANSFORMS = {
    "sharpen": _sharpen,
    "window-1-99": _window,
    "gamma-0.8": lambda v: v ** 0.8,
    "gamma-1.25": lambda v: v ** 1.25,
    "jpeg-50": _jpeg,
    "half-resolution": _half_resolution,
}


def stressed(x, name, mean, std):
    """A copy of the normalised ``(N, 1, H, W)`` array ``x`` with transform ``name`` applied."""
    fn = TRANSFORMS[name]
    out = np.empty(x.shape, np.float32)
    for i in range(len(x)):
        v = np.clip(np.asarray(x[i, 0], np.float32) * std + mean, 0, 1)
        out[i, 0] = (np.clip(fn(v), 0, 1) - mean) / std
    return out


def flip_shares(predict, x, labels, mean, std):
    """{"normal": {transform: share}, "pneumonia": {...}, "normal_mean", "pneumonia_mean"}:
    the share of films of each kind whose label ``predict`` (array -> logits) changes under
    each transform, and the mean over the transforms (the protocol's criterion is
    ``normal_mean``)."""
    labels = np.asarray(labels)
    base = predict(x).argmax(1)
    normal = labels == NORMAL
    out = {"normal": {}, "pneumonia": {}}
    for name in TRANSFORMS:
        flipped = predict(stressed(x, name, mean, std)).argmax(1) != base
        out["normal"][name] = float(flipped[normal].mean()) if normal.any() else float("nan")
        out["pneumonia"][name] = (float(flipped[~normal].mean()) if (~normal).any()
                                  else float("nan"))
    for kind in ("normal", "pneumonia"):
        out[f"{kind}_mean"] = float(np.mean(list(out[kind].values())))
    return out
