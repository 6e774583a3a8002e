"""Coverage-guided fuzz target for decoding + preprocessing (atheris / libFuzzer).

    python fuzz/fuzz_decode.py NEW_UNITS_DIR fuzz/corpus -max_total_time=60

Bytes either go through ``decode_bytes`` (as a file would) and then the kernel, or are read as a
raw array of a fuzzed shape and dtype and go straight to the kernel, which must then agree with
the NumPy reference. Expected rejections (DecodeError, ImageError) are fine; anything else, or a
crash, is a finding.
"""
import os
import sys

import atheris

# A lower pixel limit than the library's 100 MP keeps each input's memory small, so the fuzzer
# explores code paths instead of allocation sizes (the limit itself is tested elsewhere).
FUZZ_MAX_PIXELS = 4_000_000
os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(FUZZ_MAX_PIXELS)

with atheris.instrument_imports():
    import numpy as np

    from xray_infer import decode
    from xray_infer.decode import decode_bytes
    from xray_infer.errors import DecodeError, ImageError
    from xray_infer.preprocess import preprocess, reference_preprocess

DTYPES = (np.uint8, np.uint16, np.float32)
decode.MAX_PIXELS = FUZZ_MAX_PIXELS


def test_one_input(data):
    fdp = atheris.FuzzedDataProvider(data)
    size = fdp.ConsumeIntInRange(1, 48)
    if fdp.ConsumeBool():
        try:
            decoded = decode_bytes(fdp.ConsumeBytes(fdp.remaining_bytes()), "<fuzz>")
        except DecodeError:
            return
        out = preprocess(decoded.pixels, size=size, mean=0.5, std=0.25, maxval=decoded.maxval)
        if not np.isfinite(out).all():
            raise AssertionError("non-finite output from a decoded image")
        return
    h, w = fdp.ConsumeIntInRange(0, 40), fdp.ConsumeIntInRange(0, 40)
    dtype = DTYPES[fdp.ConsumeIntInRange(0, 2)]
    raw = fdp.ConsumeBytes(h * w * np.dtype(dtype).itemsize)
    if len(raw) < h * w * np.dtype(dtype).itemsize:
        return
    img = np.frombuffer(raw, dtype).reshape(h, w)
    if dtype == np.float32:
        img = np.nan_to_num(img, nan=0.0, posinf=1.0, neginf=0.0).clip(0, 1).astype(np.float32)
    try:
        got = preprocess(img, size=size, mean=0.5, std=0.25)
    except ImageError:
        return
    ref = reference_preprocess(img, size=size, mean=0.5, std=0.25)
    if np.abs(got - ref).max() > 1e-3:
        raise AssertionError(f"kernel and reference differ for {img.shape} {img.dtype} -> {size}")


def main(argv=None):
    atheris.Setup(argv or sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
