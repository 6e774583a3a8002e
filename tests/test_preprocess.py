"""The compiled kernel against the NumPy reference of the preprocessing definition."""
import glob
from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.testing import assert_allclose

from xray_infer import _preprocess
from xray_infer.decode import read_image
from xray_infer.errors import ImageError
from xray_infer.preprocess import area_weights, preprocess, preprocess_into, reference_preprocess
from threads import run_threads  # tests/threads.py

TOL = 1e-4  # max abs difference after normalisation
NORM = dict(mean=0.5, std=0.25)


def test_kernel_is_compiled_extension():
    assert Path(_preprocess.__file__).suffix in (".so", ".pyd"), _preprocess.__file__
    assert not _preprocess.__file__.endswith(".py")


@pytest.mark.parametrize("n_in,n_out,expected", [
    (4, 2, [[0.5, 0.5], [0.5, 0.5]]),
    (3, 2, [[2 / 3, 1 / 3], [1 / 3, 2 / 3]]),
    (2, 4, [[1.0], [1.0], [1.0], [1.0]]),
    (2, 3, [[1.0, 0.0], [0.5, 0.5], [1.0, 0.0]]),
    (5, 5, [[1.0]] * 5),
])
def test_area_weights_hand_computed(n_in, n_out, expected):
    start, count, w = area_weights(n_in, n_out)
    dense = np.zeros((n_out, n_in))
    for i in range(n_out):
        dense[i, start[i]:start[i] + count[i]] = w[i, :count[i]]
    exp_dense = np.zeros((n_out, n_in))
    for i, row in enumerate(expected):
        nz = [v for v in row if v > 0]
        exp_dense[i, start[i]:start[i] + len(nz)] = nz
    assert_allclose(dense, exp_dense, atol=1e-12)
    assert_allclose(dense.sum(1), 1.0, atol=1e-12)
    assert (start >= 0).all() and (start + count <= n_in).all()


def test_reference_hand_computed_2x2_to_1():
    img = np.array([[0, 255], [255, 255]], np.uint8)
    out = reference_preprocess(img, size=1, mean=0.0, std=1.0)
    assert_allclose(out, [[0.75]], atol=1e-7)
    assert_allclose(preprocess(img, size=1, mean=0.0, std=1.0), [[0.75]], atol=1e-6)


def test_normalisation_of_constant_image():
    img = np.full((37, 53), 51, np.uint8)
    expected = (51 / 255 - 0.5) / 0.25
    assert_allclose(preprocess(img, size=16, **NORM), expected, atol=1e-6)
    img16 = np.full((20, 20), 65535, np.uint16)
    assert_allclose(preprocess(img16, size=8, **NORM), (1 - 0.5) / 0.25, atol=1e-6)


def test_shrinking_matches_opencv_inter_area():
    rng = np.random.default_rng(1)
    img = rng.random((301, 417)).astype(np.float32)
    ours = reference_preprocess(img, size=64, mean=0.0, std=1.0)
    theirs = cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA)
    assert_allclose(ours, theirs, atol=1e-5)


SHAPES = [(1, 1), (1, 7), (7, 1), (2, 3), (13, 11), (224, 224), (225, 223), (100, 300),
          (300, 100), (57, 999), (1024, 1400), (3, 500)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("size", [1, 5, 64, 224])
def test_kernel_matches_reference(shape, dtype, size):
    rng = np.random.default_rng(hash((shape, size)) % 2**32)
    if dtype == np.float32:
        img = rng.random(shape, dtype=np.float32)
    else:
        img = rng.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)
    ref = reference_preprocess(img, size=size, **NORM)
    assert_allclose(preprocess(img, size=size, **NORM), ref, atol=TOL, rtol=0)
    assert_allclose(preprocess(img, size=size, threads=3, **NORM), ref, atol=TOL, rtol=0)


def test_kernel_respects_declared_bit_depth():
    img = np.random.default_rng(2).integers(0, 4096, (300, 200), dtype=np.uint16)  # 12-bit data
    ref = reference_preprocess(img, size=32, maxval=4095, **NORM)
    assert_allclose(preprocess(img, size=32, maxval=4095, **NORM), ref, atol=TOL)
    assert abs(ref.mean()) < 0.3  # mid-grey when scaled by 4095; about -1.9 by 65535


def test_non_contiguous_input_is_handled():
    img = np.random.default_rng(3).integers(0, 256, (200, 300), dtype=np.uint8)
    view = img[::2, ::3]
    assert_allclose(preprocess(view, size=32, **NORM),
                    reference_preprocess(np.ascontiguousarray(view), size=32, **NORM), atol=TOL)


def test_writes_into_batch_slot_only():
    batch = np.full((3, 1, 16, 16), 7.0, np.float32)
    img = np.zeros((40, 40), np.uint8)
    preprocess_into(img, batch[1, 0], **NORM)
    assert (batch[0] == 7).all() and (batch[2] == 7).all()
    assert_allclose(batch[1, 0], -2.0)


@pytest.mark.parametrize("bad,reason", [
    (np.zeros((4, 4, 3), np.uint8), "2-D"),
    (np.zeros((0, 5), np.uint8), "empty"),
    (np.zeros((5, 5), np.int32), "dtype"),
    (np.zeros((5, 5), np.float64), "dtype"),
    (np.array([[np.nan, 0]], np.float32), "NaN"),
    ([[1, 2]], "numpy array"),
])
def test_wrapper_rejects_bad_images(bad, reason):
    with pytest.raises(ImageError, match=reason) as e:
        preprocess(bad, size=8, source="scan.png", **NORM)
    assert "scan.png" in str(e.value)


def test_wrapper_rejects_bad_output_buffers():
    img = np.zeros((10, 10), np.uint8)
    for out in (np.zeros((8, 9), np.float32), np.zeros((8, 8), np.float64),
                np.zeros((16, 16), np.float32)[::2, ::2]):
        with pytest.raises(ValueError):
            preprocess_into(img, out, **NORM)


def test_threads_share_no_state():
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (rng.integers(50, 900), rng.integers(50, 900)), dtype=np.uint8)
              for _ in range(16)]
    expected = [reference_preprocess(im, size=96, **NORM) for im in images]

    def work(offset):
        indices = [(k + offset) % len(images) for k in range(40)]
        return [i for i in indices
                if np.abs(preprocess(images[i], size=96, **NORM) - expected[i]).max() > TOL]

    assert all(bad == [] for bad in run_threads(work, 6).values())


def test_openmp_rows_from_several_python_threads():
    """threads > 1 (OpenMP rows, where compiled in) while several Python threads call the kernel."""
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 65536, (rng.integers(200, 700), rng.integers(200, 700)),
                           dtype=np.uint16) for _ in range(6)]
    expected = [reference_preprocess(im, size=128, **NORM) for im in images]

    def work(offset):
        indices = [(k + offset) % len(images) for k in range(12)]
        return [i for i in indices if np.abs(preprocess(images[i], size=128, threads=2 + offset % 3,
                                                        **NORM) - expected[i]).max() > TOL]

    assert all(bad == [] for bad in run_threads(work, 4).values())


@pytest.mark.slow
def test_kernel_matches_reference_on_all_fullres_scans(data):
    paths = sorted(glob.glob(str(data / "fullres" / "*" / "*.jpeg")))
    assert len(paths) == 240
    worst = 0.0
    for p in paths:
        img = read_image(p)
        ref = reference_preprocess(img.pixels, size=224, maxval=img.maxval, **NORM)
        got = preprocess(img.pixels, size=224, maxval=img.maxval, **NORM)
        worst = max(worst, float(np.abs(got - ref).max()))
    assert worst <= TOL, worst
