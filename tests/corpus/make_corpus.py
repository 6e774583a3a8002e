"""Write a corpus of broken and unusual image files for end-to-end robustness tests.

    python tests/corpus/make_corpus.py OUT_DIR SOURCE_SCAN.jpeg

Every file is derived from one real scan or written from scratch; ``EXPECTED`` says, for each
file name, whether the library should classify it (True) or reject it with an error naming what
is wrong (a substring of the reason).
"""
import os
import struct
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np

#: file name -> True (classified) or a substring of the expected error.
EXPECTED = {
    "empty.jpeg": "empty file",
    "truncated.jpeg": "truncated JPEG",
    "garbage.png": "not a decodable image",
    "text.jpg": "not a decodable image",
    "folder.jpeg": "directory",
    "zero-width.png": "empty image",
    "bomb.png": "over the limit",
    "bomb.jpeg": "over the limit",
    "one-pixel.png": "too small for a radiograph",
    "thin-row.png": "too small for a radiograph",
    "thin-column.png": "too small for a radiograph",
    "strip.png": "not the shape of a chest film",
    "padded.jpeg": True,  # trailing bytes after the end-of-image marker, as some archives write
    "gray16.png": True,
    "rgb.png": True,
    "rgba.png": True,
    "gray.tiff": True,
    "radiance.png": "unrecognised format",  # a Radiance HDR file: OpenCV could, we do not
    "gray.bmp": True,
    "progressive.jpeg": True,
    "upper-case.JPEG": True,
}


def _png_header(width, height):
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF))


def _jpeg_sof(width, height):
    sof = struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


def make(out, source):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    raw = Path(source).read_bytes()
    gray = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_GRAYSCALE)
    (out / "empty.jpeg").write_bytes(b"")
    (out / "truncated.jpeg").write_bytes(raw[: len(raw) // 3])
    (out / "garbage.png").write_bytes(np.random.default_rng(0).bytes(4096))
    (out / "text.jpg").write_text("this is a text file with an image extension\n")
    (out / "folder.jpeg").mkdir(exist_ok=True)
    (out / "zero-width.png").write_bytes(_png_header(0, 100))
    (out / "bomb.png").write_bytes(_png_header(60000, 60000))
    (out / "bomb.jpeg").write_bytes(_jpeg_sof(60000, 60000))
    cv2.imwrite(str(out / "one-pixel.png"), gray[:1, :1])
    cv2.imwrite(str(out / "thin-row.png"), cv2.resize(gray, (4000, 1), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(out / "thin-column.png"), cv2.resize(gray, (1, 4000), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(out / "strip.png"), cv2.resize(gray, (900, 200), interpolation=cv2.INTER_AREA))
    (out / "padded.jpeg").write_bytes(raw + b"\x00" * 4096)
    cv2.imwrite(str(out / "gray16.png"), gray.astype(np.uint16) * 257)
    bgr = cv2.merge([gray, gray, gray])
    cv2.imwrite(str(out / "rgb.png"), bgr)
    cv2.imwrite(str(out / "rgba.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(out / "gray.tiff"), gray)
    ok, hdr = cv2.imencode(".hdr", cv2.merge([gray, gray, gray]).astype(np.float32) / 255)
    (out / "radiance.png").write_bytes(hdr.tobytes())
    cv2.imwrite(str(out / "gray.bmp"), gray)
    cv2.imwrite(str(out / "progressive.jpeg"), gray, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    (out / "upper-case.JPEG").write_bytes(raw)
    assert sorted(os.listdir(out)) == sorted(EXPECTED), "corpus and EXPECTED disagree"
    return out


if __name__ == "__main__":
    make(*sys.argv[1:3])
