"""The range a 16-bit PNG or TIFF's samples span, so that a 12-bit radiograph exported into a
16-bit file is read as 12-bit, not as a nearly black 16-bit image.

One rule, in this order (docs/inputs.md):
1. What the file declares: a TIFF's SMaxSampleValue; a PNG's sBIT or a TIFF's BitsPerSample of
   N < 16 bits. Values that fit in N bits are the low bits (``2**N - 1`` is the maximum, as
   DICOM's BitsStored); values above it were scaled to 16 bits, as the PNG standard asks of
   sBIT writers (the maximum is 65535).
2. What the caller declares: ``max_value`` (``--max-value``).
3. Otherwise, as DICOM's BitsStored would: the smallest of 8, 10, 12, 14 and 16 bits that holds
   the largest value. Logged (INFO, ``xray_infer.bitdepth``) for each file it applies to.

8-bit files and DICOM (which declares BitsStored) are not affected.
"""
import logging
import struct

log = logging.getLogger("xray_infer.bitdepth")

#: The depths a range is inferred from: those detectors and exports write.
DEPTHS = (8, 10, 12, 14, 16)

_PNG = b"\x89PNG\r\n\x1a\n"
#: sBIT bytes per PNG colour type that are colour samples (alpha, the last, is not counted).
_SBIT_SAMPLES = {0: 1, 2: 3, 3: 3, 4: 1, 6: 3}
_TIFF_BITS, _TIFF_SMAX = 258, 281
#: TIFF field types: (struct code, size).
_TIFF_TYPES = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}


class Declared:
    """What a file says of its samples' range: ``bits`` (significant bits) or ``maximum``."""

    def __init__(self, bits=None, maximum=None):
        self.bits, self.maximum = bits, maximum

    def __repr__(self):
        return f"Declared(bits={self.bits}, maximum={self.maximum})"


def _png(data):
    """sBIT of a PNG (chunks before the first IDAT), or None."""
    i, n = 8, len(data)
    colour_type = None
    while i + 8 <= n:
        length, kind = struct.unpack(">I4s", data[i:i + 8])
        body = data[i + 8:i + 8 + length]
        if kind == b"IHDR" and len(body) >= 10:
            colour_type = body[9]
        elif kind == b"sBIT" and colour_type in _SBIT_SAMPLES:
            bits = body[:_SBIT_SAMPLES[colour_type]]
            if bits and all(1 <= b <= 16 for b in bits):
                return Declared(bits=max(bits))
            return None
        elif kind in (b"IDAT", b"IEND"):
            return None
        i += 12 + length
    return None


def _tiff_values(data, order, entry):
    tag_type, count, inline = struct.unpack(order + "HI4s", entry[2:12])
    if tag_type not in _TIFF_TYPES or not 1 <= count <= 16:
        return None
    code, size = _TIFF_TYPES[tag_type]
    if count * size <= 4:
        raw = inline[:count * size]
    else:
        offset = struct.unpack(order + "I", inline)[0]
        raw = data[offset:offset + count * size]
        if len(raw) < count * size:
            return None
    return struct.unpack(order + code * count, raw)


def _tiff(data):
    """SMaxSampleValue or BitsPerSample (first image), or None."""
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return None
    ifd = struct.unpack(order + "I", data[4:8])[0]
    if ifd + 2 > len(data):
        return None
    count = struct.unpack(order + "H", data[ifd:ifd + 2])[0]
    tags = {}
    for k in range(count):
        entry = data[ifd + 2 + 12 * k:ifd + 14 + 12 * k]
        if len(entry) < 12:
            break
        tag = struct.unpack(order + "H", entry[:2])[0]
        if tag in (_TIFF_BITS, _TIFF_SMAX):
            tags[tag] = _tiff_values(data, order, entry)
    if tags.get(_TIFF_SMAX):
        return Declared(maximum=max(tags[_TIFF_SMAX]))
    if tags.get(_TIFF_BITS) and 1 <= max(tags[_TIFF_BITS]) < 16:
        return Declared(bits=max(tags[_TIFF_BITS]))
    return None


def declared(data):
    """What a PNG or TIFF file's header declares of its samples' range, or None."""
    if data[:8] == _PNG:
        return _png(data)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff(data)
    return None


def check_max_value(value):
    """``value`` as a float if it can be a 16-bit image's maximum (1 to 65535), else
    ValueError."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"max_value must be a number from 1 to 65535, got {value!r}") from None
    if not 1 <= number <= 65535:
        raise ValueError(f"max_value must be from 1 to 65535, got {value!r}")
    return number


def maxval(pixels, declaration, max_value, source):
    """The maximum a 16-bit image's samples are read against (the rule above)."""
    top = int(pixels.max())
    if declaration is not None and declaration.maximum is not None:
        return float(declaration.maximum)
    if declaration is not None and declaration.bits is not None:
        low = 2 ** declaration.bits - 1
        return float(low if top <= low else 65535)
    if max_value is not None:
        return float(max_value)
    bits = next(b for b in DEPTHS if top < 2 ** b)
    if bits < 16:
        log.info("%a: a 16-bit image that declares no bit depth; its values (up to %d) are "
                 "read as %d-bit (0 to %d); --max-value (max_value=) sets the range",
                 source, top, bits, 2 ** bits - 1)
    return float(2 ** bits - 1)
