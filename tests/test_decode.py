"""Decoding files into 2-D grayscale scans, and the errors for files that are not."""
import os
import struct
import zlib

import cv2
import numpy as np
import pytest

from xray_infer import decode
from xray_infer.decode import MAX_PIXELS, decode_bytes, jpeg_complete, read_image
from xray_infer.errors import DecodeError

SCAN = "IM-0001-0001.jpeg"  # a test-split scan shipped in the samples


def test_reads_real_scan_as_2d_uint8(samples):
    d = read_image(samples / SCAN)
    assert d.pixels.ndim == 2 and d.pixels.dtype == np.uint8 and d.maxval == 255
    assert d.pixels.shape == (224, 224)


def test_colour_and_16_bit_png(tmp_path, samples):
    gray = read_image(samples / SCAN).pixels
    bgr = cv2.merge([gray, gray, gray])
    cv2.imwrite(str(tmp_path / "rgb.png"), bgr)
    assert np.array_equal(read_image(tmp_path / "rgb.png").pixels, gray)
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))
    assert np.array_equal(read_image(tmp_path / "rgba.png").pixels, gray)
    g16 = gray.astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    d = read_image(tmp_path / "g16.png")
    assert d.pixels.dtype == np.uint16 and d.maxval == 65535
    assert np.allclose(d.pixels / d.maxval, gray / 255.0)


def _png(width, height):
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)))


@pytest.mark.parametrize("name,content,reason", [
    ("empty.jpeg", b"", "empty file"),
    ("garbage.jpeg", b"this is not an image at all" * 10, "not a decodable image"),
    ("bomb.png", _png(60000, 60000), "over the limit"),
    ("zero.png", _png(0, 10), "empty image"),
])
def test_bad_files_raise_specific_errors(tmp_path, name, content, reason):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DecodeError, match=reason) as e:
        read_image(p)
    assert str(p) in str(e.value)


def test_truncated_jpeg(tmp_path, samples):
    raw = (samples / SCAN).read_bytes()
    p = tmp_path / "cut.jpeg"
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DecodeError, match="truncated"):
        read_image(p)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DecodeError, match="no such file"):
        read_image(tmp_path / "nope.jpeg")
    (tmp_path / "dir.jpeg").mkdir()
    with pytest.raises(DecodeError, match="directory"):
        read_image(tmp_path / "dir.jpeg")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_file(tmp_path):
    p = tmp_path / "locked.jpeg"
    p.write_bytes(b"\xff\xd8")
    p.chmod(0)
    with pytest.raises(DecodeError, match="permission"):
        read_image(p)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")
def test_a_file_holding_more_than_its_size_is_read_on_up_to_the_limit(monkeypatch):
    """A file is read as the size it reports plus one byte; one that holds more (it grew since
    the check, or reports 0 as /proc's files do) is read on, bounded by MAX_FILE_BYTES."""
    status = "/proc/self/status"
    assert os.stat(status).st_size == 0 and len(open(status, "rb").read()) > 100
    with pytest.raises(DecodeError, match="unrecognised format"):
        read_image(status)
    monkeypatch.setattr(decode, "MAX_FILE_BYTES", 100)  # more than the 1 byte its size allows
    with pytest.raises(DecodeError, match="over the limit of 100"):
        read_image(status)


def test_pixel_limit_is_checked_before_decoding():
    assert 60000 * 60000 > MAX_PIXELS
    with pytest.raises(DecodeError, match="60000x60000"):
        decode_bytes(_png(60000, 60000), "bomb.png")


def test_exif_orientation_is_applied(tmp_path, samples):
    """A JPEG whose EXIF says 'rotate 90 CW' decodes upright, as OpenCV's decoder defines it."""
    from PIL import Image
    gray = read_image(samples / SCAN).pixels
    tall = np.ascontiguousarray(gray[:, :150])  # non-square so the rotation is visible
    img = Image.fromarray(np.ascontiguousarray(np.rot90(tall, 1)))  # stored rotated 90 CCW
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    p = tmp_path / "rotated.jpeg"
    img.save(p, exif=exif, quality=98)
    d = read_image(p).pixels
    assert d.shape == tall.shape
    assert np.abs(d.astype(int) - tall.astype(int)).mean() < 3


def test_cmyk_and_grayscale_jpeg(tmp_path, samples):
    from PIL import Image
    gray = read_image(samples / SCAN).pixels
    Image.fromarray(gray).convert("CMYK").save(tmp_path / "cmyk.jpeg", quality=98)
    Image.fromarray(gray).save(tmp_path / "gray.jpeg", quality=98)
    for name in ("cmyk.jpeg", "gray.jpeg"):
        d = read_image(tmp_path / name)
        assert d.pixels.shape == gray.shape and d.pixels.dtype == np.uint8
        assert np.abs(d.pixels.astype(int) - gray.astype(int)).mean() < 3, name


def test_trailing_bytes_after_the_end_marker_are_accepted(tmp_path, samples):
    raw = (samples / SCAN).read_bytes()
    padded = tmp_path / "padded.jpeg"
    padded.write_bytes(raw + b"\x00" * 10_000)
    assert np.array_equal(read_image(padded).pixels, read_image(samples / SCAN).pixels)


def test_end_marker_is_found_by_walking_the_stream(samples):
    raw = (samples / SCAN).read_bytes()
    assert jpeg_complete(raw) and jpeg_complete(raw + b"\xff\xd9" * 3)
    for cut in range(4, len(raw) - 1, max(1, len(raw) // 97)):
        assert not jpeg_complete(raw[:cut]), cut
    assert not jpeg_complete(raw[:-2] + b"\x00" * 100)  # end marker overwritten by padding


def test_a_thumbnail_end_marker_does_not_hide_truncation(tmp_path, samples):
    """An APP segment carrying a whole JPEG (as EXIF thumbnails do) holds an end marker; the
    cut main image must still be refused."""
    raw = (samples / SCAN).read_bytes()
    thumb = cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))[1].tobytes()
    app = b"\xff\xe1" + struct.pack(">H", len(thumb) + 2) + thumb
    with_thumb = raw[:2] + app + raw[2:]
    assert np.array_equal(decode_bytes(with_thumb).pixels, read_image(samples / SCAN).pixels)
    cut = tmp_path / "cut.jpeg"
    cut.write_bytes(with_thumb[: len(with_thumb) * 2 // 3])
    with pytest.raises(DecodeError, match="truncated JPEG"):
        read_image(cut)


def test_truncated_progressive_jpeg(tmp_path, samples):
    gray = read_image(samples / SCAN).pixels
    prog = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert jpeg_complete(prog)
    p = tmp_path / "prog.jpeg"
    p.write_bytes(prog[: len(prog) // 2])
    with pytest.raises(DecodeError, match="truncated JPEG"):
        read_image(p)
