"""What compressed pixel data declares about its image, read before any decoder runs.

A DICOM's Rows and Columns are checked against the limits, but a decoder sizes its output by
the codestream's own header: a 5 kB JPEG-LS instance whose frame header says 16384 x 16384
under Rows x Columns of 512 x 512 made the decoder allocate gigabytes. Here the codestream's
declaration (JPEG and JPEG-LS SOF, JPEG 2000 SIZ or a JP2 header box: size, components and
precision; the RLE segment table and what its segments expand to) must agree with the data set
before its pixels are decoded: a 6 kB JPEG 2000 instance declaring 2,048 components took a
node past 12 GB.
"""
import struct

#: JPEG start-of-frame markers: SOF0..SOF15 less DHT (C4), JPG (C8) and DAC (CC); JPEG-LS's
#: SOF55 (F7).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}

_JPEG = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
         "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
_J2K = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}
_RLE = "1.2.840.10008.1.2.5"


def jpeg_frame(data):
    """(width, height, bits per sample, components, SOF marker) from a JPEG or JPEG-LS frame
    header, or None where there is none."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in _SOF:
            if i + 10 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height, data[i + 4], data[i + 9], marker
        i += 2 + length
    return None


def j2k_header(data):
    """(width, height, components, largest bit depth) from a JPEG 2000 codestream's SIZ
    segment, or a JP2 file's image header box; None where neither is whole."""
    if data[:4] == b"\xff\x4f\xff\x51" and len(data) >= 42:
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", data[8:24])
        components = struct.unpack(">H", data[40:42])[0]
        depths = data[42:42 + 3 * components:3]  # Ssiz of each component: depth - 1, signed
        if len(depths) < components:
            return None
        return xsiz - xo, ysiz - yo, components, max(((d & 0x7F) + 1 for d in depths),
                                                    default=0)
    box = data.find(b"ihdr")
    if data[4:8] == b"jP  " and box >= 0 and len(data) >= box + 15:
        height, width, components = struct.unpack(">IIH", data[box + 4:box + 14])
        depth = data[box + 14]
        return width, height, components, (depth & 0x7F) + 1 if depth != 255 else 38
    return None


def _rle_expansion(segment, limit):
    """Bytes an RLE segment (PS3.5 G.3, PackBits) decodes to, counted without decoding; stops
    once past ``limit``."""
    i, n, out = 0, len(segment), 0
    while i < n and out <= limit:
        header = segment[i]
        if header < 128:  # a literal run of header + 1 bytes
            out += header + 1
            i += header + 2
        elif header > 128:  # one byte repeated 257 - header times
            out += 257 - header
            i += 2
        else:  # 128: no operation
            i += 1
    return out


def _rle_problem(data, rows, cols, segments_expected):
    if len(data) < 64:
        return "an RLE header shorter than 64 bytes"
    count, *offsets = struct.unpack("<16L", data[:64])
    if count != segments_expected:
        return f"{count} RLE segments where the data set's samples and bits make " \
               f"{segments_expected}"
    offsets = offsets[:count] + [len(data)]
    if offsets[0] != 64 or any(b <= a for a, b in zip(offsets, offsets[1:])):
        return "RLE segment offsets out of order or outside the fragment"
    for a, b in zip(offsets, offsets[1:]):
        if _rle_expansion(data[a:b], rows * cols) > rows * cols + 1:  # one byte of padding
            return f"an RLE segment expands beyond {cols}x{rows} pixels"
    return None


def problem(transfer_syntax, frame, rows, cols, samples=1, bits_allocated=16):
    """Why ``frame`` (the first frame's encapsulated bytes) cannot be decoded safely as a
    ``cols`` x ``rows`` image of ``samples`` samples of at most ``bits_allocated`` bits, or
    None. A decoder sizes its output by the codestream's own header, width x height x
    components x bytes a sample: each must be what the data set says, and a codestream that
    declares no size is a problem too."""
    ts = str(transfer_syntax)
    if ts == _RLE:
        return _rle_problem(frame, rows, cols, samples * -(-bits_allocated // 8))
    if ts in _JPEG:
        found, kind = jpeg_frame(frame), "JPEG"
        declared = (found[0], found[1], found[3], found[2]) if found else None
    elif ts in _J2K:
        declared, kind = j2k_header(frame), "JPEG 2000"
    else:
        return None  # not compressed here, or a syntax pydicom checks itself
    if declared is None:
        return f"the {kind} codestream declares no image size"
    width, height, components, precision = declared
    if (width, height) != (cols, rows):
        return (f"the {kind} codestream declares {width}x{height} pixels where Rows x "
                f"Columns say {cols}x{rows}")
    if components != samples:
        return (f"the {kind} codestream declares {components} components where Samples per "
                f"Pixel says {samples}")
    if precision > bits_allocated:
        return (f"the {kind} codestream declares {precision}-bit samples where Bits "
                f"Allocated says {bits_allocated}")
    return None
