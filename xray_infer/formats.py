"""What a file is, from its leading bytes: the image formats decoded here, and DICOM.

Light on purpose (no OpenCV, no pydicom): folders are sorted into inputs with it before
anything heavy is imported, and decoding dispatches on it, so a file's name never decides how
it is read (a JPEG named ``.dcm`` is a JPEG; a DICOM named by its UID alone is DICOM).
"""
import struct

#: Names that say a file is DICOM (it is read as what its content is, whatever its name).
DICOM_EXTENSIONS = (".dcm", ".dicom")
#: File extensions collected when scanning folders whatever their content (matched
#: case-insensitively); other files are collected when their content is an image or DICOM.
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp", *DICOM_EXTENSIONS)

#: Bytes read to recognise a file (a DICOM preamble and its marker).
HEAD_BYTES = 132

#: DICOM value representations, for recognising a data set written without its preamble.
_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV "
                 b"TM UC UI UL UN UR US UT UV".split())


def sniff_format(data):
    """'jpeg', 'png', 'tiff' or 'bmp' from the leading bytes, else None.

    Only these formats reach OpenCV: radiographs are not exported in its other ones, and some of
    those (Radiance HDR, PFM, ...) decode to float images of up to 12 bytes a pixel.
    """
    if data[:2] == b"\xff\xd8":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:2] == b"BM":
        return "bmp"
    return None


def _bare_data_set(data):
    """Whether ``data`` starts as a DICOM data set without the file preamble: a little-endian
    element of the file meta (group 0002) or identifying (group 0008) group, with an explicit
    value representation, or implicit with a plausible length. Older modalities and some
    archives write such files; pydicom reads them (``force=True``)."""
    if len(data) < 8:
        return False
    group, element = struct.unpack("<HH", data[:4])
    if group not in (0x0002, 0x0008) or element > 0x00FF:
        return False
    if data[4:6] in _VRS:
        return True
    return group == 0x0008 and struct.unpack("<I", data[4:8])[0] <= 1024


def dicom_kind(data):
    """'file' (preamble and ``DICM`` marker), 'bare' (a data set without them) or None."""
    if data[128:132] == b"DICM":
        return "file"
    return "bare" if _bare_data_set(data) else None


def recognise(data):
    """'dicom', an image format (``sniff_format``) or None, from a file's leading bytes."""
    if dicom_kind(data):
        return "dicom"
    return sniff_format(data)
