"""DICOM files built from real test scans give the predictions of their JPEG originals."""
import sys

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.uid import JPEG2000Lossless, generate_uid  # noqa: E402

from xray_infer import Classifier  # noqa: E402
from xray_infer.decode import read_image  # noqa: E402
from xray_infer.errors import DecodeError  # noqa: E402
from dicomfiles import chest_dicoms, write_dicom  # noqa: E402,F401 (used here too)
from helpers import PROBABILITY_TOLERANCE, run_cli  # noqa: E402

SCANS = ["IM-0001-0001.jpeg", "person100_bacteria_475.jpeg", "person10_virus_35.jpeg"]  # samples


@pytest.fixture(scope="module")
def clf(precision):
    return Classifier(providers=["CPUExecutionProvider"], precision=precision)


def variants(tmp_path, gray, i):
    g12 = np.round(gray.astype(np.float64) * 4095 / 255).astype(np.uint16)
    return {
        "8-bit MONOCHROME2": write_dicom(tmp_path / f"{i}a.dcm", gray, 8),
        "12-bit in 16": write_dicom(tmp_path / f"{i}b.dcm", g12, 12),
        "MONOCHROME1": write_dicom(tmp_path / f"{i}c.dcm", (4095 - g12).astype(np.uint16), 12,
                                   "MONOCHROME1"),
        "rescale slope/intercept": write_dicom(tmp_path / f"{i}d.dcm", g12, 12,
                                               RescaleSlope=2, RescaleIntercept=-1024),
        "window": write_dicom(tmp_path / f"{i}e.dcm", g12, 12, WindowCenter=2048,
                              WindowWidth=4096),
    }


def test_dicom_predictions_match_jpeg(clf, samples, tmp_path):
    for i, scan in enumerate(SCANS):
        jpeg = samples / scan
        gray = read_image(jpeg).pixels
        ref = clf.classify([str(jpeg)])[0]
        files = variants(tmp_path, gray, i)
        results = clf.classify([str(p) for p in files.values()])
        for (name, _), r in zip(files.items(), results):
            assert r.ok, (name, r.error)
            assert r.label == ref.label, (scan, name)
            diff = max(abs(r.probabilities[k] - ref.probabilities[k]) for k in ref.probabilities)
            assert diff < PROBABILITY_TOLERANCE[clf.variant.precision], (scan, name, diff)


def test_monochrome1_is_inverted(samples, tmp_path):
    gray = read_image(samples / SCANS[0]).pixels
    a = read_image(write_dicom(tmp_path / "m2.dcm", gray, 8)).pixels
    b = read_image(write_dicom(tmp_path / "m1.dcm", 255 - gray, 8, "MONOCHROME1")).pixels
    assert a.dtype == np.float32 and np.allclose(a, b) and np.allclose(a, gray / 255)


@pytest.mark.parametrize("kw,reason", [
    (dict(NumberOfFrames=2), "multi-frame"),
    (dict(photometric="ARGB", SamplesPerPixel=4), "4 samples per pixel"),
    (dict(photometric="PALETTE COLOR"), "photometric interpretation"),
    # a codestream that is none: refused by what its (garbage) SIZ declares, before decoding
    (dict(syntax=JPEG2000Lossless), "refused before decoding: the JPEG 2000 codestream"),
])
def test_unsupported_dicom_is_rejected(tmp_path, kw, reason):
    pixels = np.zeros((8, 8), np.uint8)
    if kw.get("NumberOfFrames"):
        pixels = np.zeros((2, 8, 8), np.uint8)
    p = write_dicom(tmp_path / "bad.dcm", pixels if pixels.ndim == 2 else pixels[0], 8, **kw)
    with pytest.raises(DecodeError, match=reason) as e:
        read_image(p)
    assert "bad.dcm" in str(e.value)


def test_dicom_without_pixels_and_garbage(tmp_path):
    p = tmp_path / "report.dcm"
    write_dicom(p, np.zeros((4, 4), np.uint8), 8)
    ds = pydicom.dcmread(p)
    del ds.PixelData
    ds.save_as(p)
    with pytest.raises(DecodeError, match="without pixel data"):
        read_image(p)
    q = tmp_path / "junk.dcm"
    q.write_bytes(b"\x00" * 128 + b"DICM" + b"\x01" * 50)
    with pytest.raises(DecodeError, match="DICOM"):
        read_image(q)


def test_missing_pydicom_gives_install_hint(tmp_path, monkeypatch):
    p = write_dicom(tmp_path / "a.dcm", np.zeros((4, 4), np.uint8), 8)
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(DecodeError, match=r"install the dicom extra \(pip install -e '\.\[dicom\]'"):
        read_image(p)


def _patched(path, old, new):
    """Write a malformed value the way some encoders do: valid when saved, then overwritten."""
    raw = path.read_bytes()
    assert raw.count(old) == 1 and len(old) == len(new)
    path.write_bytes(raw.replace(old, new))
    return path


def _g12(samples):
    gray = read_image(samples / SCANS[0]).pixels
    return np.round(gray.astype(np.float64) * 4095 / 255).astype(np.uint16)


def test_signed_pixels_use_the_declared_signed_range(tmp_path, samples):
    g12 = _g12(samples)
    signed = (g12.astype(np.int16) - 2048)
    p = write_dicom(tmp_path / "s.dcm", signed, 12, PixelRepresentation=1)
    assert np.allclose(read_image(p).pixels, g12 / 4095, atol=1e-6)


def test_voi_lut_applies_after_the_modality_transform(tmp_path, samples):
    """Modality: 2 * stored + 100; the VOI LUT starts at 100 and maps linearly to 12 bits. The
    LUT must see modality values (applied to stored values it would read the wrong entries)."""
    from pydicom.dataset import Dataset as Item
    g12 = _g12(samples)
    lut = Item()
    lut.LUTDescriptor = [8191, 100, 12]
    lut.LUTData = np.round(np.arange(8191) / 8190 * 4095).astype("<u2").tobytes()
    p = write_dicom(tmp_path / "lut.dcm", g12, 12, RescaleSlope=2, RescaleIntercept=100,
                    VOILUTSequence=[lut])
    assert np.allclose(read_image(p).pixels, g12 / 4095, atol=1e-3)


def test_voi_lut_function_sigmoid_is_honoured(tmp_path, samples):
    g12 = _g12(samples)
    c, w = 2048.0, 1000.0
    linear = read_image(write_dicom(tmp_path / "l.dcm", g12, 12, WindowCenter=c,
                                    WindowWidth=w)).pixels
    sigmoid = read_image(write_dicom(tmp_path / "g.dcm", g12, 12, WindowCenter=c, WindowWidth=w,
                                     VOILUTFunction="SIGMOID")).pixels
    expected = 1 / (1 + np.exp(-4 * (g12 - c) / w))
    assert np.allclose(sigmoid, expected, atol=1e-3)
    assert np.abs(linear - sigmoid).max() > 0.05


@pytest.mark.parametrize("kw,old,new", [
    (dict(WindowCenter="1357.5", WindowWidth=4096), b"1357.5", b"13A7.5"),
    (dict(NumberOfFrames="+00000001"), b"+00000001", b"+0000001A"),
    # a value representation pydicom does not know (NotImplementedError, read lazily); found
    # by the fuzz target in PhotometricInterpretation
    ({}, b"\x28\x00\x04\x00CS", b"\x28\x00\x04\x00C\\"),
])
def test_malformed_header_values_name_the_file(tmp_path, samples, kw, old, new):
    p = _patched(write_dicom(tmp_path / "odd.dcm", _g12(samples), 12, **kw), old, new)
    with pytest.raises(DecodeError, match="malformed DICOM header value") as e:
        read_image(p)
    assert "odd.dcm" in str(e.value)


def _pydicom_test_files():
    from pathlib import Path
    root = Path(pydicom.__file__).parent / "data" / "test_files"
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", ""))


def test_pydicom_corpus_through_the_cli(tmp_path):
    """Real files from many encoders and vendors, broken ones included: every file gets a row,
    every refusal is a sentence (no bare Python exception), and pydicom's warnings go to the
    log file, not the terminal."""
    import json
    files = _pydicom_test_files()
    assert len(files) > 50
    out, log = tmp_path / "out.jsonl", tmp_path / "run.log"
    p = run_cli("classify", *files, "-o", out, "--log", log, "--scope", "off",  # decoding alone
                timeout=600)
    assert p.returncode == 1, p.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in rows) == sorted(map(str, files))
    errors = [r["error"] for r in rows if r["error"]]
    assert 0 < len(errors) < len(rows)
    for e in errors:
        assert not e.startswith(("ValueError", "TypeError", "KeyError", "IndexError",
                                 "AttributeError")), e
    assert "Warning" not in p.stderr and "warn" not in p.stderr.split("failed")[0]
    assert "UserWarning" in log.read_text()


def _uncompressed_twin(ds):
    from pydicom.uid import ExplicitVRLittleEndian as EVRLE
    twin = ds.copy()
    twin.file_meta = ds.file_meta.copy()
    twin.decompress()
    twin.file_meta.TransferSyntaxUID = EVRLE
    return twin


@pytest.mark.parametrize("syntax_name", ["RLELossless", "JPEGLSLossless", "JPEG2000Lossless"])
def test_compressed_transfer_syntaxes_decode_like_the_uncompressed_file(tmp_path, samples,
                                                                       syntax_name):
    """Fixtures made here: the 12-bit scan written uncompressed, then compressed losslessly in
    each syntax by pydicom's encoders; both must decode to the same pixels."""
    import pydicom.uid
    syntax = getattr(pydicom.uid, syntax_name)
    plain = write_dicom(tmp_path / "plain.dcm", _g12(samples), 12)
    ds = pydicom.dcmread(plain)
    ds.compress(syntax)
    packed = tmp_path / f"{syntax_name}.dcm"
    ds.save_as(packed, enforce_file_format=True)
    assert pydicom.dcmread(packed).file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(read_image(packed).pixels, read_image(plain).pixels)


def test_twelve_bit_jpeg_extended(tmp_path):
    """JPEG Extended (process 2 and 4), 12-bit, which the decoders before pylibjpeg-libjpeg
    refused: pydicom's own real-world file (no encoder for this syntax exists to make one
    here). It must decode, and agree with the same file decompressed and stored uncompressed."""
    from pydicom.data import get_testdata_file
    from pydicom.uid import JPEGExtended12Bit
    path = get_testdata_file("JPGExtended.dcm")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == JPEGExtended12Bit and ds.BitsStored == 12
    twin = tmp_path / "twin.dcm"
    _uncompressed_twin(ds).save_as(twin, enforce_file_format=True)
    got = read_image(path).pixels
    assert got.dtype == np.float32 and got.shape == (ds.Rows, ds.Columns)
    assert np.array_equal(got, read_image(twin).pixels)
    assert got.max() > got.min()


def _ybr(rgb):
    from pydicom.pixels import convert_color_space
    return convert_color_space(rgb, "RGB", "YBR_FULL")


@pytest.mark.parametrize("photometric,syntax_name", [
    ("RGB", "ExplicitVRLittleEndian"), ("YBR_FULL", "ExplicitVRLittleEndian"),
    ("RGB", "RLELossless"), ("RGB", "JPEG2000Lossless")])
def test_colour_dicom_becomes_luminance(clf, tmp_path, samples, photometric, syntax_name):
    """A scanned film or secondary capture in colour: converted to luminance as colour JPEG and
    PNG are, so the grey scan in colour gets the grey scan's prediction."""
    import pydicom.uid
    gray = read_image(samples / SCANS[2]).pixels
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    pixels = _ybr(rgb) if photometric == "YBR_FULL" else rgb
    p = write_dicom(tmp_path / "c.dcm", pixels, 8, photometric, SamplesPerPixel=3,
                    PlanarConfiguration=0)
    syntax = getattr(pydicom.uid, syntax_name)
    if syntax.is_compressed:
        ds = pydicom.dcmread(p)
        ds.compress(syntax)
        ds.save_as(p, enforce_file_format=True)
    got = read_image(p).pixels
    assert got.shape == gray.shape
    assert np.abs(got * 255 - gray).max() <= (2.0 if photometric == "YBR_FULL" else 0.51)
    a, b = clf.classify([str(p), str(samples / SCANS[2])])
    assert a.label == b.label


def test_compressed_pixel_data_must_declare_the_image_its_header_does():
    """A decoder sizes its output by the codestream: what it declares is checked first."""
    import struct

    from xray_infer import codestream
    jpeg_ls = "1.2.840.10008.1.2.4.80"
    sof55 = b"\xff\xd8\xff\xf7\x00\x0b\x08" + struct.pack(">HH", 16384, 16384) + b"\x01\x01\x11\x00"
    assert "declares 16384x16384 pixels where Rows x Columns say 512x512" in \
        codestream.problem(jpeg_ls, sof55, 512, 512, 1, 8)
    assert codestream.problem(jpeg_ls, sof55, 16384, 16384, 1, 8) is None
    assert "declares no image size" in codestream.problem(jpeg_ls, b"\xff\xd8\xff\xd9", 8, 8)
    rle = "1.2.840.10008.1.2.5"
    run = bytes([257 - 128, 0])  # 2 bytes that expand to 128
    header = struct.pack("<16L", 1, 64, *[0] * 14)
    assert codestream.problem(rle, header + run * 32, 64, 64, 1, 8) is None  # 4,096 bytes
    assert "expands beyond 64x64" in codestream.problem(rle, header + run * 4000, 64, 64, 1, 8)
    assert "2 RLE segments" in codestream.problem(
        rle, struct.pack("<16L", 2, 64, 66, *[0] * 13) + run * 2, 64, 64, 1, 8)


def _siz(width, height, depths):
    """A JPEG 2000 codestream's start: SOC, then a SIZ segment with one Ssiz per component."""
    import struct
    body = struct.pack(">HIIIIIIII", 0, width, height, 0, 0, width, height, 0, 0)
    body += struct.pack(">H", len(depths)) + b"".join(bytes([d - 1, 1, 1]) for d in depths)
    return b"\xff\x4f\xff\x51" + struct.pack(">H", len(body) + 2) + body


def test_a_codestream_must_declare_the_components_and_precision_its_header_does():
    """A decoder sizes its output by components and bytes a sample too: a 6 kB JPEG 2000
    instance declaring 2,048 components took a node past 12 GB."""
    import struct

    from xray_infer import codestream
    j2k, jpeg_ls = "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80"
    assert codestream.problem(j2k, _siz(64, 64, [12]), 64, 64, 1, 16) is None
    assert "declares 2048 components where Samples per Pixel says 1" in \
        codestream.problem(j2k, _siz(64, 64, [8] * 2048), 64, 64, 1, 8)
    assert "declares 16-bit samples where Bits Allocated says 8" in \
        codestream.problem(j2k, _siz(64, 64, [16]), 64, 64, 1, 8)
    sof55 = b"\xff\xd8\xff\xf7\x00\x0b\x08" + struct.pack(">HH", 64, 64) + bytes([255]) + \
        b"\x01\x11\x00" * 255
    assert "declares 255 components" in codestream.problem(jpeg_ls, sof55, 64, 64, 1, 8)
    sof3 = b"\xff\xd8\xff\xc3\x00\x0b\x10" + struct.pack(">HH", 64, 64) + b"\x01\x01\x11\x00"
    assert "declares 16-bit samples where Bits Allocated says 8" in \
        codestream.problem("1.2.840.10008.1.2.4.70", sof3, 64, 64, 1, 8)


def test_a_dicom_whose_codestream_declares_2048_components_is_refused_before_decoding(
        tmp_path):
    from pydicom.encaps import encapsulate
    path = write_dicom(tmp_path / "bomb.dcm", np.zeros((64, 64), np.uint8), 8,
                       syntax=JPEG2000Lossless)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([_siz(64, 64, [8] * 2048) + b"\x00" * 64])
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DecodeError, match="refused before decoding: the JPEG 2000 codestream "
                                          "declares 2048 components"):
        read_image(str(path))


def test_a_jpeg_file_declaring_components_no_radiograph_has_is_refused(tmp_path):
    import struct
    sof0 = b"\xff\xd8\xff\xc0\x00\x17\x08" + struct.pack(">HH", 64, 64) + bytes([5]) + \
        b"\x01\x11\x00" * 5 + b"\xff\xd9"
    bomb = tmp_path / "five.jpeg"
    bomb.write_bytes(sof0)
    with pytest.raises(DecodeError, match="declares 5 components"):
        read_image(str(bomb))


def test_result_uids_are_the_sources_own_even_when_a_modality_reuses_an_instance_uid(
        tmp_path, samples):
    """One SOP Instance UID sent for two patients: two results, never one a PACS keeps for
    both; the same source again: the same UIDs (a PACS replaces); the SC is still known as
    this model's own when it comes back."""
    pytest.importorskip("highdicom")
    from xray_infer.dicom_results import is_own_result, results_for
    clf = Classifier(providers=["CPUExecutionProvider"], heatmaps=True, precision="float32")
    path = chest_dicoms(tmp_path / "a", 1, "PATIENT-A")[0]
    a = pydicom.dcmread(path)
    b = pydicom.dcmread(path)
    b.PatientID, b.StudyInstanceUID = "PATIENT-B", generate_uid()  # same SOP Instance UID
    r = clf.classify([str(path)])[0]
    scan = read_image(str(path))
    digest = "0" * 64

    def made(source):
        return results_for(source, r, scan.pixels, scan.maxval, clf.spec, digest)
    sr_a, sc_a = made(a)
    sr_b, sc_b = made(b)
    assert a.SOPInstanceUID == b.SOPInstanceUID
    assert sr_a.SOPInstanceUID != sr_b.SOPInstanceUID and sc_a.SOPInstanceUID != sc_b.SOPInstanceUID
    assert made(a)[0].SOPInstanceUID == sr_a.SOPInstanceUID  # deterministic
    assert is_own_result(sc_a, digest) and is_own_result(sc_b, digest)
    assert not is_own_result(sc_a, "1" * 64)
