"""16-bit exports of radiographs: a 10-, 12- or 14-bit scan written into a 16-bit PNG or TIFF
(what ``cv2.imwrite(path, ds.pixel_array)`` does) gets the label of its 8-bit original, with or
without a declared bit depth, for every variant; and the range is never silently guessed."""
import io
import struct
import zlib

import cv2
import numpy as np
import pytest

from helpers import SAMPLES
from helpers import run_cli as run
from xray_infer import Classifier, Decoded, bitdepth
from xray_infer.decode import decode_bytes


def with_sbit(png, bits):
    """A PNG with an sBIT chunk (``bits`` significant bits of grey) after its header."""
    body = bytes([bits])
    chunk = struct.pack(">I", 1) + b"sBIT" + body + \
        struct.pack(">I", zlib.crc32(b"sBIT" + body) & 0xFFFFFFFF)
    end_of_header = 8 + 8 + 13 + 4
    return png[:end_of_header] + chunk + png[end_of_header:]


def tiff_with_max(pixels, maximum):
    from PIL import Image
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="TIFF", tiffinfo={281: maximum})
    return out.getvalue()


def exported(scan8, bits):
    """The 8-bit scan as a ``bits``-bit detector would have recorded it, in 16-bit samples."""
    return np.round(scan8.astype(np.float64) / 255 * (2 ** bits - 1)).astype(np.uint16)


def png(pixels):
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return data.tobytes()


@pytest.fixture(scope="module")
def scans():
    return [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in SAMPLES]


def test_the_rule_declared_given_inferred():
    low = np.array([[0, 3000]], np.uint16)  # 12-bit values in the low bits
    assert bitdepth.maxval(low, bitdepth.Declared(bits=12), None, "x") == 4095
    assert bitdepth.maxval(low, bitdepth.Declared(bits=10), None, "x") == 65535  # scaled up
    assert bitdepth.maxval(low, bitdepth.Declared(maximum=3500), None, "x") == 3500
    assert bitdepth.maxval(low, None, 16383, "x") == 16383
    assert bitdepth.maxval(low, None, None, "x") == 4095
    assert bitdepth.maxval(np.array([[1023]], np.uint16), None, None, "x") == 1023
    assert bitdepth.maxval(np.array([[1024]], np.uint16), None, None, "x") == 4095
    assert bitdepth.maxval(np.array([[40000]], np.uint16), None, None, "x") == 65535
    assert bitdepth.maxval(np.array([[200]], np.uint16), None, None, "x") == 255
    for bad in (0, 70000, "x", float("nan")):
        with pytest.raises(ValueError):
            bitdepth.check_max_value(bad)


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_every_depth_with_and_without_a_declaration_keeps_the_label(scans, precision):
    clf = Classifier(precision=precision)
    originals = clf.classify(SAMPLES)
    assert all(r.ok for r in originals)
    for bits in (8, 10, 12, 14, 16):
        for declared in (False, True):
            blobs = []
            for scan in scans:
                pixels = exported(scan, bits)
                data = png(pixels)
                blobs.append(with_sbit(data, bits) if declared else data)
            if declared and bits < 16:  # the same scan as a TIFF that declares its maximum
                blobs += [tiff_with_max(exported(scan, bits), 2 ** bits - 1) for scan in scans]
            results = clf.classify(blobs)
            for original, r in zip(originals * 2, results):
                assert r.ok, (bits, declared, r)
                diff = max(abs(r.probabilities[k] - original.probabilities[k])
                           for k in r.probabilities)
                assert diff < 0.05, (bits, declared, diff)
                # a close call may tip over at the rounding of another depth; others may not
                top, second = sorted(original.probabilities.values())[::-1][:2]
                assert r.label == original.label or top - second < 2 * diff, (bits, declared)


def test_a_png_whose_sbit_samples_were_scaled_to_16_bits_is_read_as_16_bit(scans):
    """The PNG standard's way: 12 significant bits shifted to the top of the sample."""
    pixels = exported(scans[0], 12) << 4
    decoded = decode_bytes(with_sbit(png(pixels), 12), "x")
    assert decoded.maxval == 65535
    clf = Classifier()
    assert clf.classify([with_sbit(png(pixels), 12)])[0].label == \
        clf.classify(SAMPLES[:1])[0].label


def test_max_value_overrides_the_inference_for_files_and_arrays_that_declare_nothing(scans):
    # a dim 12-bit scan: its values never pass 1023, so the inference reads it as 10-bit
    dim = (exported(scans[0], 12) // 4).astype(np.uint16)
    assert dim.max() <= 1023
    clf, given = Classifier(scope=False), Classifier(scope=False, max_value=4095)
    truth = clf.classify([Decoded(dim, 4095.0)])[0]
    assert given.classify([png(dim)])[0].probabilities == truth.probabilities
    assert given.classify([dim])[0].probabilities == truth.probabilities
    assert clf.classify([png(dim)])[0].probabilities != truth.probabilities
    # values above the given maximum are an error, never clipped into a label
    bright = given.classify([png(exported(scans[0], 14))])[0]
    assert bright.status == "failed" and "outside the declared range [0, 4095]" in bright.error


def test_the_command_line_takes_max_value_and_logs_each_inferred_range(scans, tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    for f, scan in zip(SAMPLES[:3], scans):
        (folder / f"{f.stem}.png").write_bytes(png(exported(scan, 12)))
    log = tmp_path / "run.log"
    p = run("classify", folder, "-q", "--log", log)
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in log.read_text().splitlines() if "declares no bit depth" in ln]
    assert len(lines) == 3 and all("read as 12-bit (0 to 4095)" in ln for ln in lines)
    given = run("classify", folder, "-q", "--max-value", "4095")
    assert given.returncode == 0 and given.stdout == p.stdout
    bad = run("classify", folder, "--max-value", "70000")
    assert bad.returncode == 2 and "--max-value" in bad.stderr and "Traceback" not in bad.stderr
