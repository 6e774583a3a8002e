"""Class activation heatmaps: from the model's low-resolution map to the scan's own size, and
the overlay picture the command line writes."""
import cv2
import numpy as np


def upsample(class_map, shape):
    """A model's ``(h, w)`` class map as float32 in [0, 1] at ``shape`` = (height, width).

    The map covers the square the scan was squashed into, so stretching it back to the scan's
    size undoes the squash. Bilinear, the same for every input; then min-max scaled (a map
    without contrast is all zeros).
    """
    m = cv2.resize(np.asarray(class_map, np.float32), (int(shape[1]), int(shape[0])),
                   interpolation=cv2.INTER_LINEAR)
    lo, hi = float(m.min()), float(m.max())
    if not hi > lo:
        return np.zeros(m.shape, np.float32)
    return (m - lo) / (hi - lo)


#: Longest side of an overlay PNG by default (``classify --heatmap-size``): enough to read a
#: film's regions, a few hundred kB a PNG; a full-size overlay of a 2,900 px scan is 1.5 MB.
OVERLAY_LONG_SIDE = 1024


def overlay(pixels, maxval, heatmap, caption_lines, alpha=0.4, long_side=OVERLAY_LONG_SIDE):
    """The scan in grey with the heatmap as a colour overlay and the caption written on it:
    a BGR uint8 image of the scan's size, shrunk to ``long_side`` pixels where it is longer
    (0 or None: full size)."""
    h, w = np.shape(pixels)
    if long_side and max(h, w) > long_side:  # shrink first: drawing and PNG cost follow size
        f = long_side / max(h, w)
        size = (max(1, round(w * f)), max(1, round(h * f)))
        pixels = cv2.resize(np.asarray(pixels, np.float32), size, interpolation=cv2.INTER_AREA)
        heatmap = cv2.resize(np.asarray(heatmap, np.float32), size,
                             interpolation=cv2.INTER_AREA)
    grey = np.clip(np.asarray(pixels, np.float64) / float(maxval) * 255.0, 0, 255).astype(np.uint8)
    base = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    colour = cv2.applyColorMap((heatmap * 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(base, 1 - alpha, colour, alpha, 0)
    h, w = grey.shape
    scale = max(0.35, min(w, h) / 700)
    thickness = max(1, int(round(scale * 1.5)))
    step = int(28 * scale) + 4
    band = out[:step * len(caption_lines) + 6]
    band[:] = (band * 0.35).astype(np.uint8)  # a dark band keeps the text legible on any map
    y = step - 4
    for line in caption_lines:
        cv2.putText(out, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    thickness, cv2.LINE_AA)
        y += step
    return out


def caption(result):
    """The label and probabilities of a Result, as lines for ``overlay``."""
    probs = ", ".join(f"{k} {v:.2f}" for k, v in result.probabilities.items())
    return [f"{result.label} (not for diagnostic use)", probs]
