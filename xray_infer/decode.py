"""Reading an image file into the 2-D grayscale array that preprocessing takes.

Every failure is a DecodeError naming the file and the reason; nothing here returns a
half-decoded image. Files are read into memory first so that size checks happen before the
decoder allocates anything.
"""
import os
import re
import stat
import struct
from typing import Dict, NamedTuple, Optional, Tuple

#: Largest image (width x height) decoded; a header declaring more is rejected before decoding.
#: 100 MP is about four times the largest radiograph detectors produce.
MAX_PIXELS = 100_000_000
# OpenCV's own guard (default 2**30 pixels), a second line behind the header checks here; it is
# read once, at OpenCV's first decode.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from . import bitdepth, dicom
from .codestream import jpeg_frame
from .colour import channel_spread, share
from .formats import DICOM_EXTENSIONS, dicom_kind, sniff_format
from .errors import DecodeError
from .preprocess import jpeg_scale

#: Largest file read.
MAX_FILE_BYTES = 512 * 1024 * 1024

_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


class Decoded(NamedTuple):
    """A decoded scan: 2-D ``pixels`` (uint8, uint16 or float32) and the declared maximum;
    for DICOM, ``attributes`` holds the header values the scope gate reads. ``size``: the
    scan's own (height, width) where ``pixels`` were decoded at a reduced size
    (``preprocess.jpeg_scale``), else None. ``colour``: for an image decoded from colour, the
    share of its pixels in colour (``colour_share``), else None."""
    pixels: np.ndarray
    maxval: float
    attributes: Optional[Dict[str, str]] = None
    size: Optional[Tuple[int, int]] = None
    colour: Optional[float] = None

    @property
    def shape(self):
        """The scan's own (height, width), whatever size it was decoded at."""
        return self.size or self.pixels.shape


def _declared_size(data):
    """(width, height) from a PNG or BMP header, or None where none is found (a JPEG's is in
    its ``jpeg_frame``)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    return None


# In entropy-coded JPEG data, 0xFF is followed by 0x00 (a stuffed byte), 0xD0-0xD7 (restart
# markers) or more 0xFF (fill); anything else is the next marker.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_complete(data):
    """Whether a JPEG stream reaches its end-of-image marker.

    Walks the segments (skipping their payloads, so an EXIF thumbnail's own end marker does not
    count) and the entropy-coded scans; bytes after the end marker (padding some archives add)
    are allowed. libjpeg fills a truncated scan with grey and only warns, so this decides.
    """
    i, n = 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
        elif marker == 0xD9:
            return True
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
        else:
            if i + 4 > n:
                return False
            i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
            if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
                m = _JPEG_MARKER.search(data, i)
                if m is None:
                    return False
                i = m.start()
    return False




def _to_gray(img, path):
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[2] == 1:
        return img[:, :, 0]
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if img.ndim == 3 and img.shape[2] == 4:
        # Alpha is ignored: radiographs exported as RGBA carry an opaque alpha channel.
        return cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
    raise DecodeError(path, f"unsupported image layout {img.shape}")


#: OpenCV's reduced-size grayscale decoding, by DCT-scaling denominator.
_REDUCED = {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
            8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


def _jpeg_flags(frame, target):
    """OpenCV's decoding flags and the DCT-scaling denominator for a JPEG with this
    ``jpeg_frame`` whose pixels will be resized to ``target`` (``preprocess.jpeg_scale``). Only
    8-bit grey or YCbCr frames of the baseline, extended and progressive processes are scaled:
    libjpeg converts those to luminance itself (the same BT.601 weights as ``_to_gray``)."""
    if (not target or frame is None or frame[2] != 8 or frame[3] not in (1, 3)
            or frame[4] not in (0xC0, 0xC1, 0xC2)):
        return _FLAGS, 1
    d = jpeg_scale(frame[0], frame[1], target)
    return (_REDUCED[d], d) if d > 1 else (_FLAGS, 1)


def decode_bytes(data, source="<bytes>", target=None, max_value=None):
    """Decode an encoded image held in memory, named ``source`` in errors. See ``read_image``:
    the same checks and the same errors, whether the bytes came from a file here or not."""
    if len(data) == 0:
        raise DecodeError(source, "empty file (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise _too_large(source, len(data))
    kind = dicom_kind(data)
    if kind:
        return Decoded(*dicom.decode_dicom(data, source, MAX_PIXELS, bare=kind == "bare"))
    if sniff_format(data) is None:
        named = " (named as DICOM, but it holds no DICOM data set)" if \
            str(source).lower().endswith(DICOM_EXTENSIONS) else ""
        raise DecodeError(source, f"not a decodable image{named}: unrecognised format; JPEG, "
                                  f"PNG, TIFF, BMP and DICOM are read, whatever the file's name")
    frame = jpeg_frame(data)  # the JPEG frame header, read once for the checks and the scale
    size = frame[:2] if frame else _declared_size(data)
    if size is not None:
        width, height = size
        if width == 0 or height == 0:
            raise DecodeError(source, f"header declares an empty image ({width}x{height})")
        if width * height > MAX_PIXELS:
            raise DecodeError(source, f"header declares {width}x{height} pixels, over the limit "
                                      f"of {MAX_PIXELS:,} (xray_infer.decode.MAX_PIXELS)")
    if frame is not None and frame[3] not in (1, 3, 4):  # libjpeg's output is 1, 3 or 4 wide
        raise DecodeError(source, f"the JPEG frame header declares {frame[3]} components (a "
                                  f"radiograph has 1, or 3 in colour)")
    if data[:2] == b"\xff\xd8" and not jpeg_complete(data):
        raise DecodeError(source, "truncated JPEG (the data ends before its end-of-image marker)")
    # ANYDEPTH keeps 16-bit data, ANYCOLOR keeps grayscale single-channel; unlike UNCHANGED,
    # this applies the EXIF orientation as OpenCV's decoder defines it.
    flags, scale = _jpeg_flags(frame, target)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as e:  # OpenCV raises for some malformed headers instead of returning None
        reason = e.msg.strip() or "corrupt data"
        raise DecodeError(source, f"not a decodable image ({reason})") from None
    if img is None:
        raise DecodeError(source, "not a decodable image (unknown format or corrupt data)")
    if img.dtype not in (np.uint8, np.uint16):
        raise DecodeError(source, f"unsupported pixel type {img.dtype}")
    # measured against the maximum found below (a 16-bit file may hold 12-bit values)
    spread = channel_spread(img) if img.ndim == 3 and img.shape[2] >= 3 else None
    img = _to_gray(img, source)
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        raise DecodeError(source, f"{img.shape[1]}x{img.shape[0]} pixels is over the limit "
                                  f"of {MAX_PIXELS:,}")
    maxval = 255.0 if img.dtype == np.uint8 else \
        bitdepth.maxval(img, bitdepth.declared(data), max_value, source)
    colour = share(spread, maxval) if spread is not None else None
    if scale == 1:
        return Decoded(np.ascontiguousarray(img), maxval, colour=colour)
    # The scan's own size, in the decoded orientation (an EXIF rotation may swap the sides).
    width, height = size
    h, w = img.shape
    full = (height, width) if (h, w) == (-(-height // scale), -(-width // scale)) else \
        (width, height)
    return Decoded(np.ascontiguousarray(img), maxval, size=full, colour=colour)


def _too_large(source, size):
    return DecodeError(source, f"file is {size:,} bytes, over the limit of {MAX_FILE_BYTES:,}")


def _open_checked(path):
    """An open binary file for ``path``, checked: a directory, anything but a regular file
    (a named pipe, a device, a socket) or a file over MAX_FILE_BYTES is a DecodeError; OSError
    passes through. Opened without blocking and checked on the open file, so a named pipe
    cannot hang the run, nor a file swapped for one after a check."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise DecodeError(path, "is a directory, not an image file")
        if not stat.S_ISREG(st.st_mode):
            raise DecodeError(path, "not a regular file (a named pipe, device or socket)")
        if st.st_size > MAX_FILE_BYTES:
            raise _too_large(path, st.st_size)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_error(path, e):
    if isinstance(e, FileNotFoundError):
        return DecodeError(path, "no such file")
    if isinstance(e, PermissionError):
        return DecodeError(path, "permission denied")
    return DecodeError(path, f"cannot read file: {e.strerror or e}")


def check_file(path):
    """Raise the DecodeError ``read_image`` would raise before decoding: ``path`` is a
    directory, not a regular file, missing, larger than MAX_FILE_BYTES or unreadable. Lets a
    caller that hands the reading to others (the Ray engine) report those inputs exactly as
    ``read_image`` does."""
    path = os.fspath(path)
    try:
        _open_checked(path).close()
    except OSError as e:
        raise _read_error(path, e) from None


def read_image(path: "str | os.PathLike[str]", target: Optional[int] = None,
               max_value: Optional[int] = None) -> Decoded:
    """Read ``path`` into a ``Decoded`` 2-D grayscale scan.

    Parameters
    ----------
    path : str or path-like
        A JPEG, PNG, TIFF, BMP or DICOM file (what it is comes from its content).
    target : int, optional
        The side of the square its pixels will be resized to, which lets a large JPEG decode
        at a reduced size (``preprocess.jpeg_scale``; ``Decoded.shape`` is still the scan's
        own).
    max_value : int, optional
        The maximum of a 16-bit image that declares none (``xray_infer.bitdepth``).

    Returns
    -------
    Decoded
        The pixels and their declared maximum (and, for DICOM, the header values the scope
        gate reads).

    Colour is converted to luminance (ITU-R BT.601 weights, as OpenCV defines them); 8-bit
    data keeps maxval 255; 16-bit data gets the maximum its header declares, else
    ``max_value``, else the one inferred as DICOM's BitsStored would (``xray_infer.bitdepth``).
    DICOM files (recognised by content, ``formats.dicom_kind``, whatever their name) go
    through ``xray_infer.dicom`` and come back as float32 in [0, 1].

    Raises
    ------
    DecodeError
        The file is missing, a directory, unreadable, empty, larger than the limits, truncated,
        or not an image OpenCV can decode. The error names the file.
    """
    path = os.fspath(path)
    try:
        with _open_checked(path) as f:
            # As many bytes as the file holds (asking for the limit's worth allocated a buffer
            # that large for every file), and one more to see whether it grew since the
            # check; a file that did stays bounded by the limit.
            size = os.fstat(f.fileno()).st_size
            data = f.read(size + 1)
            if len(data) > size:
                data += f.read(MAX_FILE_BYTES + 1 - len(data))
    except OSError as e:
        raise _read_error(path, e) from None
    return decode_bytes(data, path, target, max_value)
