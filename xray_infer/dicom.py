"""DICOM radiographs (needs the optional ``pydicom``: ``pip install 'xray-infer[dicom]'``).

Single-frame grayscale images only. Pixel values go through the file's modality transform
(Rescale Slope/Intercept or Modality LUT), then its VOI transform (the first Window
Center/Width, else a VOI LUT), else the full range that BitsStored declares; MONOCHROME1 is
inverted. The result is float32 in [0, 1] (maxval 1).
"""
import io

import numpy as np

from .errors import DecodeError

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


def is_dicom(data, path=""):
    return data[128:132] == b"DICM" or str(path).lower().endswith((".dcm", ".dicom"))


def _first(value):
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def decode_dicom(data, source, max_pixels):
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise DecodeError(source, "DICOM file, but pydicom is not installed: "
                                  "pip install 'xray-infer[dicom]'") from None
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as e:  # pydicom raises several types for malformed files
        raise DecodeError(source, f"unreadable DICOM: {e}") from None
    if "PixelData" not in ds:
        raise DecodeError(source, "DICOM without pixel data (not an image object)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DecodeError(source, f"multi-frame DICOM ({frames} frames) is not supported")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DecodeError(source, f"colour DICOM (SamplesPerPixel {ds.SamplesPerPixel}, "
                                  f"{ds.get('PhotometricInterpretation', '?')}) is not supported")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in MONOCHROME:
        raise DecodeError(source, f"photometric interpretation {photometric or 'missing'!r} is "
                                  f"not supported (expected MONOCHROME1 or MONOCHROME2)")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows == 0 or cols == 0:
        raise DecodeError(source, f"DICOM declares an empty image ({cols}x{rows})")
    if rows * cols > max_pixels:
        raise DecodeError(source, f"DICOM declares {cols}x{rows} pixels, over the limit of "
                                  f"{max_pixels:,}")
    try:
        stored = ds.pixel_array
    except Exception as e:
        ts = ds.file_meta.get("TransferSyntaxUID", None)
        name = f"{ts.name} ({ts})" if ts is not None else "unknown"
        raise DecodeError(source, f"cannot decode pixel data in transfer syntax {name}: "
                                  f"{e}") from None
    if stored.ndim != 2:
        raise DecodeError(source, f"unexpected pixel array shape {stored.shape}")
    x = np.asarray(apply_modality_lut(stored, ds), np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        # Linear VOI function, DICOM PS3.3 C.11.2.1.2.1, to [0, 1].
        c, w = _first(ds.WindowCenter), max(_first(ds.WindowWidth), 1.0)
        y = np.clip((x - (c - 0.5)) / max(w - 1.0, 1.0) + 0.5, 0.0, 1.0)
    elif "VOILUTSequence" in ds:
        out_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        y = np.asarray(apply_voi_lut(stored, ds), np.float64) / (2 ** out_bits - 1)
    else:
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
        lo = -(2 ** (bits - 1)) if int(ds.get("PixelRepresentation", 0)) == 1 else 0
        ends = np.asarray(apply_modality_lut(np.array([lo, lo + 2 ** bits - 1]), ds), np.float64)
        lo_v, hi_v = float(ends.min()), float(ends.max())
        y = (x - lo_v) / max(hi_v - lo_v, 1e-12)
    y = np.clip(y, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        y = 1.0 - y
    return np.ascontiguousarray(y, np.float32)
