"""Property-based checks of the kernel against the reference over shapes, dtypes and strides."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from xray_infer.preprocess import preprocess, reference_preprocess

DTYPES = {np.uint8: 255, np.uint16: 65535, np.float32: 1.0}


@st.composite
def images(draw):
    dtype = draw(st.sampled_from(list(DTYPES)))
    h = draw(st.integers(1, 300))
    w = draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        img = rng.random((h, w), dtype=np.float32)
    else:
        img = rng.integers(0, DTYPES[dtype] + 1, (h, w), dtype=dtype)
    step_y, step_x = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return img[::step_y, ::step_x]  # strided views too


@settings(max_examples=150, deadline=None)
@given(img=images(), size=st.integers(1, 80), threads=st.integers(1, 3),
       mean=st.floats(0.0, 1.0), std=st.floats(0.05, 2.0))
def test_kernel_equals_reference(img, size, threads, mean, std):
    got = preprocess(img, size=size, mean=mean, std=std, threads=threads)
    ref = reference_preprocess(np.ascontiguousarray(img), size=size, mean=mean, std=std)
    assert got.shape == (size, size) and got.dtype == np.float32
    assert np.isfinite(got).all()
    # Outputs stay inside the normalised range of the input's values: no stray reads.
    lo = (float(img.min()) / DTYPES[img.dtype.type] - mean) / std
    hi = (float(img.max()) / DTYPES[img.dtype.type] - mean) / std
    assert got.min() >= lo - 1e-4 / std and got.max() <= hi + 1e-4 / std
    assert_allclose(got, ref, atol=1e-4 * max(1.0, 0.25 / std), rtol=0)
