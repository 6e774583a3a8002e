"""What the model sees: the one definition of preprocessing, in two implementations.

Definition. A decoded scan is a 2-D grayscale array (uint8, uint16 or float32) with a declared
maximum value ``maxval`` (255 for 8-bit, ``2**bits - 1`` for deeper data). An 8-bit JPEG of at
least twice the model's input on both sides is decoded at a reduced size (``jpeg_scale``:
libjpeg's DCT scaling by 1/2, 1/4 or 1/8, never below twice the input), which skips most of the
decoding work; step 1 then still averages at least two decoded pixels per output pixel along
each axis. The decoded scan is

1. resized to ``size x size`` **without keeping the aspect ratio** (the training images are whole
   radiographs squashed to a square), by *area* resampling: along each axis, output sample ``i``
   is the mean of the input over the interval ``[i * n_in / n_out, (i + 1) * n_in / n_out)``,
   each input pixel weighted by its overlap with that interval (``area_weights``). Shrinking,
   this equals OpenCV's ``INTER_AREA`` on float input; enlarging, it mixes the two nearest
   pixels by overlap;
2. normalised to float32 as ``(x / maxval - mean) / std``.

``reference_preprocess`` is a plain NumPy transcription of this text. ``preprocess_into`` runs
the compiled kernel (``ext/_preprocess.pyx``) that does both steps in one pass and writes into
a caller-owned slot of an NCHW batch. Tests hold the two to each other.
"""
from functools import lru_cache

import numpy as np

from . import _preprocess
from .errors import ImageError

#: Smallest side of an image taken as a radiograph: below it there is no anatomy left to see
#: (a detector's coarsest useful image is several hundred pixels a side).
MIN_SIDE = 64
#: Largest ratio of the long side to the short one: chest films are 1:1 to about 1:1.5, and
#: the model sees everything squashed to a square, so a strip is not a chest film.
MAX_ASPECT = 3.0

#: JPEG DCT-scaling denominators libjpeg (and so OpenCV's IMREAD_REDUCED_*) offers.
JPEG_SCALES = (8, 4, 2)
#: A reduced decoding keeps at least this many times the model's input on both sides. At 1
#: (decode down to the input size itself) 2 of the 240 full-resolution scans changed label;
#: at 2 none did (docs/benchmarks.md).
JPEG_MIN_RATIO = 2


def jpeg_scale(width, height, size):
    """The reduced-size decoding rule: the largest denominator in ``JPEG_SCALES`` at which a
    ``width x height`` JPEG still decodes to at least ``JPEG_MIN_RATIO * size`` pixels on both
    sides (libjpeg rounds a scaled side up); 1 (full size) when none does, or ``size`` is None."""
    for d in JPEG_SCALES if size else ():
        least = JPEG_MIN_RATIO * size
        if -(-width // d) >= least and -(-height // d) >= least:
            return d
    return 1


_MAXVAL = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.float32): 1.0}


@lru_cache(maxsize=256)
def area_weights(n_in, n_out):
    """Area-resampling weights for one axis.

    Returns ``(start, count, weights)``: output sample ``i`` is
    ``sum(weights[i, j] * x[start[i] + j] for j < count[i])``. ``weights`` is float64 of shape
    ``(n_out, max(count))``, zero past ``count[i]``; each row sums to 1. Arrays are read-only.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"axis lengths must be positive, got {n_in} -> {n_out}")
    scale = n_in / n_out
    lo = np.arange(n_out, dtype=np.float64) * scale
    hi = lo + scale
    first = np.floor(lo).astype(np.int64)
    # The epsilon keeps an interval that ends exactly on a pixel edge from touching the next one.
    last = np.minimum(np.ceil(hi - 1e-9).astype(np.int64), n_in)
    count = np.maximum(last - first, 1)
    k = first[:, None] + np.arange(count.max())[None, :]
    overlap = np.clip(np.minimum(k + 1, hi[:, None]) - np.maximum(k, lo[:, None]), 0.0, None)
    overlap[np.arange(count.max())[None, :] >= count[:, None]] = 0.0
    weights = overlap / overlap.sum(axis=1, keepdims=True)
    start = first.astype(np.int32)
    count = count.astype(np.int32)
    for a in (start, count, weights):
        a.flags.writeable = False
    return start, count, weights


def default_maxval(dtype):
    """The declared maximum for a dtype: 255 (uint8), 65535 (uint16), 1.0 (float32)."""
    try:
        return _MAXVAL[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"unsupported pixel dtype {np.dtype(dtype)}; "
                        f"expected one of {', '.join(str(d) for d in _MAXVAL)}") from None


def check_image(image, source="<array>", maxval=None):
    """Return ``image`` as a C-contiguous 2-D array the kernel accepts, or raise ImageError.

    Float pixels must be finite and, like integer pixels under a declared ``maxval`` below
    their type's maximum, within ``[0, maxval]`` (default: ``default_maxval``): a value
    outside it would give a scan no training image looked like, or overflow to infinity.
    """
    if maxval is not None and not float(maxval) > 0:
        raise ValueError(f"maxval must be positive, got {maxval}")
    if not isinstance(image, np.ndarray):
        raise ImageError(source, f"expected a numpy array, got {type(image).__name__}")
    if image.ndim != 2:
        raise ImageError(source, f"expected a 2-D grayscale image, got shape {image.shape}")
    if image.dtype not in _MAXVAL:
        raise ImageError(source, f"unsupported pixel dtype {image.dtype}; "
                                 f"expected uint8, uint16 or float32")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(source, f"empty image of shape {image.shape}")
    if image.dtype == np.float32 and not np.isfinite(image).all():
        raise ImageError(source, "image contains NaN or infinite values")
    limit = default_maxval(image.dtype) if maxval is None else float(maxval)
    if image.dtype == np.float32 or limit < default_maxval(image.dtype):
        lo, hi = float(image.min()), float(image.max())
        if lo < 0 or hi > limit:
            hint = (" (8-bit values in a float array? declare their maximum: "
                    "Decoded(pixels, 255.0))"
                    if image.dtype == np.float32 and limit == 1.0 and hi <= 255 else "")
            raise ImageError(source, f"pixel values span [{lo:g}, {hi:g}], outside the declared "
                                     f"range [0, {limit:g}]{hint}")
    return np.ascontiguousarray(image)


def check_radiograph(image, source="<array>", shape=None):
    """ImageError unless a 2-D image's shape could be a chest film (``MIN_SIDE``,
    ``MAX_ASPECT``); ``shape`` (height, width): the scan's own size where ``image`` was decoded
    at a reduced one. Anything else about the array is ``check_image``'s to judge."""
    if not (isinstance(image, np.ndarray) and image.ndim == 2):
        return
    h, w = shape or image.shape
    if min(h, w) < MIN_SIDE:
        raise ImageError(source, f"{w}x{h} pixels is too small for a radiograph (shorter side "
                                 f"under {MIN_SIDE} px)")
    if max(h, w) / min(h, w) > MAX_ASPECT:
        raise ImageError(source, f"{w}x{h} pixels is not the shape of a chest film (sides "
                                 f"differ by more than {MAX_ASPECT:g}:1)")


def _affine(mean, std, maxval):
    if not maxval > 0:
        raise ValueError(f"maxval must be positive, got {maxval}")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    return 1.0 / (maxval * std), -mean / std


def reference_preprocess(image, *, size, mean, std, maxval=None):
    """NumPy reference of the definition above; returns float32 ``(size, size)``."""
    image = check_image(image, maxval=maxval)
    maxval = default_maxval(image.dtype) if maxval is None else float(maxval)
    scale, offset = _affine(mean, std, maxval)
    x = image.astype(np.float64)
    ys, yc, yw = area_weights(image.shape[0], size)
    xs, xc, xw = area_weights(image.shape[1], size)
    rows = np.stack([yw[i, :yc[i]] @ x[ys[i]:ys[i] + yc[i]] for i in range(size)])
    out = np.stack([rows[:, xs[i]:xs[i] + xc[i]] @ xw[i, :xc[i]] for i in range(size)], axis=1)
    return ((out / maxval - mean) / std).astype(np.float32)


@lru_cache(maxsize=256)
def _kernel_weights(n_in, n_out):
    start, count, weights = area_weights(n_in, n_out)
    w = weights.astype(np.float32)
    w.flags.writeable = False
    return start, count, w


def preprocess_into(image, out, *, mean, std, maxval=None, threads=1, source="<array>"):
    """Run the compiled kernel on ``image``, writing into ``out`` (float32, square, C-contiguous).

    ``out`` is typically ``batch[i, 0]`` of an NCHW float32 batch; its side is the model's
    input size. ``threads > 1`` splits output rows across OpenMP threads where compiled in.
    Raises ImageError (naming ``source``) for images the kernel cannot take.
    """
    image = check_image(image, source, maxval)
    if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.ndim == 2
            and out.shape[0] == out.shape[1] and out.flags.c_contiguous and out.flags.writeable):
        raise ValueError("out must be a writeable C-contiguous float32 square 2-D array")
    size = out.shape[0]
    maxval = default_maxval(image.dtype) if maxval is None else float(maxval)
    scale, offset = _affine(mean, std, maxval)
    threads = max(1, int(threads))
    ys, yc, yw = _kernel_weights(image.shape[0], size)
    xs, xc, xw = _kernel_weights(image.shape[1], size)
    scratch = np.empty((threads, image.shape[1]), np.float32)
    _preprocess.resize_normalise(image, ys, yc, yw, xs, xc, xw, scale, offset, out, scratch,
                                 threads)
    return out


def preprocess(image, *, size, mean, std, maxval=None, threads=1, source="<array>"):
    """Kernel preprocessing into a new float32 ``(size, size)`` array."""
    out = np.empty((size, size), np.float32)
    return preprocess_into(image, out, mean=mean, std=std, maxval=maxval, threads=threads,
                           source=source)
