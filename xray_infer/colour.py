"""How much of an image is in colour: a radiograph is grey, and the scope gate refuses an image
with more than a few per cent of its pixels in colour (``scope.py``). Measured where colour is
decoded (``decode.py`` for files, ``dicom.py`` for DICOM pixel data), beside ``bitdepth.py``,
which says what an image's maximum is."""
import numpy as np

#: A pixel is in colour where its channels differ by more than this part of their range: a grey
#: film stored as RGB or YCbCr differs by a level or two (rounding, chroma subsampling).
CHROMA = 1 / 8


def channel_spread(img):
    """How far apart the first three channels of ``img`` (H x W x C) are, pixel by pixel, on
    every 4th row and column of a large image (enough for a share)."""
    step = 4 if min(img.shape[:2]) >= 64 else 1
    sample = img[::step, ::step, :3]
    return sample.max(axis=2).astype(np.float64) - sample.min(axis=2)


def share(spread, maxval):
    return float(np.count_nonzero(spread > CHROMA * maxval)) / max(1, spread.size)


def colour_share(img, maxval):
    """The share of the pixels of ``img`` (H x W x C, the first three channels R, G, B in any
    order) whose channels differ by more than CHROMA of ``maxval``, the image's own maximum."""
    return share(channel_spread(img), maxval)
