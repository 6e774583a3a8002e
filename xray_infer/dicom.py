"""DICOM radiographs (needs the optional ``pydicom``: the ``dicom`` extra).

Single-frame images: grayscale, or colour (RGB, YBR) converted to luminance (ITU-R BT.601)
over the declared bit depth. Grayscale values go through the file's modality transform
(Rescale Slope/Intercept or Modality LUT), then its VOI transform (a VOI LUT, else the first
Window Center/Width with its VOI LUT Function), both as pydicom implements them, and are scaled
to [0, 1] over the range that transform maps to; without a VOI transform, over the range that
BitsStored declares. MONOCHROME1 is inverted. The result is float32 in [0, 1] (maxval 1).
"""
import io

import numpy as np

from . import codestream
from .errors import DecodeError
from .formats import dicom_kind

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
#: Colour images (scanned films, secondary captures) are converted to luminance; pydicom
#: returns the YBR ones as RGB.
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
#: IHE AI Results' Purpose of Reference (code value, scheme) for the equipment that made an
#: object: a processing algorithm. An object naming one is an algorithm's result (a heatmap, an
#: annotated capture), this program's own included, not an acquired radiograph.
PROCESSING_ALGORITHM = ("Newcode1", "99IHE", "Processing Algorithm")
#: Who this program's results (``dicom_results``) say made them, and the series description
#: of its heatmaps (by which a DICOMweb listing skips them).
MANUFACTURER = ALGORITHM = "xray-infer"
SC_SERIES_DESCRIPTION = f"{ALGORITHM} heatmap, not for diagnostic use"


def is_dicom(data):
    """Whether a file's leading bytes are DICOM's (with or without the preamble)."""
    return dicom_kind(data) is not None


def decode_dicom(data, source, max_pixels, bare=False):
    """(pixels float32 in [0, 1], maxval 1.0, the scope gate's attributes, None, the share of
    pixels in colour: ``colour.colour_share``, None for a grey image): ``decode.Decoded``'s
    fields; ``bare``: a data set without the preamble and marker (``formats.dicom_kind``), which
    pydicom reads only when told to."""
    try:
        import pydicom
    except ImportError:
        raise DecodeError(source, "DICOM file, but pydicom is not installed: install the "
                                  "dicom extra (pip install -e '.[dicom]' in the source "
                                  "folder)") from None
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=bare)
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            _declare_encoding(ds)
    except Exception as e:  # pydicom raises several types for malformed files
        raise DecodeError(source, f"unreadable DICOM: {e}") from None
    try:
        attributes = _attributes(ds)  # read first: the scope gate judges the header first
        try:
            pixels, colour = _pixels(ds, source, max_pixels)
        except DecodeError as e:
            e.attributes = attributes
            raise
        return pixels, 1.0, attributes, None, colour
    except DecodeError:
        raise
    except Exception as e:
        # pydicom converts values lazily: a malformed IS/DS (e.g. '1A') or a value
        # representation it does not know (NotImplementedError) surfaces here, not in dcmread.
        raise DecodeError(source, f"malformed DICOM header value ({type(e).__name__}: "
                                  f"{e})") from None


def _declare_encoding(ds):
    """A data set read without file meta (no preamble) gets the uncompressed transfer syntax
    it was read in, so that its pixel data can be decoded."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
    implicit, little = ds.original_encoding
    meta = ds.get("file_meta") or FileMetaDataset()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else \
        ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    ds.file_meta = meta


def _check_codestream(ds, source, rows, cols):
    """DecodeError unless compressed pixel data declares the image the header does
    (``codestream.problem``), before a decoder sizes its output by the codestream."""
    from pydicom.encaps import generate_frames
    ts = ds.file_meta.get("TransferSyntaxUID", None)
    if ts is None or not ts.is_compressed or ts.is_deflated:
        return
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception as e:  # malformed encapsulation: pydicom raises several types
        raise DecodeError(source, f"malformed encapsulated pixel data "
                                  f"({type(e).__name__})") from None
    why = codestream.problem(ts, frame, rows, cols, int(ds.get("SamplesPerPixel", 1)),
                             int(ds.get("BitsAllocated", 16)))
    if why:
        raise DecodeError(source, f"refused before decoding: {why}")


def _attributes(ds):
    """The header values the scope gate reads, as stripped strings ('' when absent), and
    ``ProcessingAlgorithm``: "YES" where a Contributing Equipment item's purpose is
    PROCESSING_ALGORITHM."""
    from .scope import ATTRIBUTES
    out = {}
    for keyword in ATTRIBUTES:
        try:
            value = ds.get(keyword, "")
            out[keyword] = str(value if value is not None else "").strip()
        except Exception:  # a malformed value: as if absent
            out[keyword] = ""
    out["ProcessingAlgorithm"] = "YES" if _names_an_algorithm(ds) else ""
    return out


def _names_an_algorithm(ds):
    try:
        return any((str(code.get("CodeValue", "")).strip(),
                    str(code.get("CodingSchemeDesignator", "")).strip())
                   == PROCESSING_ALGORITHM[:2]
                   for item in ds.get("ContributingEquipmentSequence", None) or []
                   for code in item.get("PurposeOfReferenceCodeSequence", None) or [])
    except Exception:  # a malformed sequence: as if absent
        return False


def _pixels(ds, source, max_pixels):
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
    if "PixelData" not in ds:
        raise DecodeError(source, "DICOM without pixel data (not an image object)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DecodeError(source, f"multi-frame DICOM ({frames} frames) is not supported")
    samples = int(ds.get("SamplesPerPixel", 1))
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    colour = samples == 3 and photometric in COLOUR
    if samples != 1 and not colour:
        raise DecodeError(source, f"DICOM with {samples} samples per pixel and photometric "
                                  f"interpretation {photometric or 'missing'!r} is not supported "
                                  f"(expected 1, or 3 as {', '.join(COLOUR)})")
    if samples == 1 and photometric not in MONOCHROME:
        raise DecodeError(source, f"photometric interpretation {photometric or 'missing'!r} is "
                                  f"not supported (expected MONOCHROME1 or MONOCHROME2)")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows == 0 or cols == 0:
        raise DecodeError(source, f"DICOM declares an empty image ({cols}x{rows})")
    if rows * cols > max_pixels:
        raise DecodeError(source, f"DICOM declares {cols}x{rows} pixels, over the limit of "
                                  f"{max_pixels:,}")
    _check_codestream(ds, source, rows, cols)
    try:
        stored = ds.pixel_array
    except Exception as e:
        ts = ds.file_meta.get("TransferSyntaxUID", None)
        name = f"{ts.name} ({ts})" if ts is not None else "unknown"
        raise DecodeError(source, f"cannot decode pixel data in transfer syntax {name}: "
                                  f"{e}") from None
    if colour:
        if stored.shape != (rows, cols, 3):
            raise DecodeError(source, f"unexpected colour pixel array shape {stored.shape}")
        # ITU-R BT.601 luminance, as for colour JPEG and PNG, over the declared bit depth.
        from .colour import colour_share
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
        luma = stored.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return (np.ascontiguousarray(np.clip(luma / (2 ** bits - 1), 0.0, 1.0), np.float32),
                colour_share(stored, 2 ** bits - 1))
    if stored.ndim != 2:
        raise DecodeError(source, f"unexpected pixel array shape {stored.shape}")
    x = apply_modality_lut(stored, ds)  # the stored array itself where it is the identity
    if "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds):
        x = np.asarray(x, np.float64)
        # pydicom's VOI transform: the VOI LUT where there is one, else the first window with
        # its VOI LUT Function. [0, 1] spans the range it maps to, probed at input extremes
        # (which a LUT clamps to its end entries and the window functions saturate at).
        if "VOILUTSequence" in ds:
            x = np.rint(x).astype(np.int64)  # a LUT is indexed by integer modality values
            ends = np.array([-2 ** 40, 2 ** 40], np.int64)
        else:
            ends = np.array([-1e300, 1e300])
        y = np.asarray(apply_voi_lut(x, ds, index=0), np.float64)
        del x
        with np.errstate(over="ignore"):
            lo, hi = np.asarray(apply_voi_lut(ends, ds, index=0), np.float64)
    else:
        # No VOI transform: the full range BitsStored declares, through the modality transform.
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
        first = -(2 ** (bits - 1)) if int(ds.get("PixelRepresentation", 0)) == 1 else 0
        lo, hi = np.asarray(apply_modality_lut(np.array([first, first + 2 ** bits - 1]), ds),
                            np.float64)
        y = x
    if not (np.isfinite([lo, hi]).all() and lo != hi):
        raise DecodeError(source, f"DICOM intensity transform maps everything to one value "
                                  f"({lo:g} to {hi:g}); check its window or VOI LUT")
    # (y - lo) / (hi - lo) in place on one float32 copy, the output: float64 temporaries of 8
    # bytes a pixel cost 600 MB to decode a 60 MB scan, which a node pays per instance it checks
    out = np.array(y, np.float32)
    del y
    out -= np.float32(lo)
    out /= np.float32(hi - lo)
    np.clip(out, 0.0, 1.0, out=out)
    if photometric == "MONOCHROME1":
        np.subtract(np.float32(1.0), out, out=out)
    return out, None
