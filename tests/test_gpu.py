"""The CUDA path, on a GPU machine with onnxruntime-gpu (skipped elsewhere):
``python -m pytest -m gpu``."""

import numpy as np
import onnxruntime as ort
import pytest

from helpers import SAMPLES
from threads import run_threads  # tests/threads.py
from xray_infer import Classifier

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="no CUDAExecutionProvider in this onnxruntime build (install onnxruntime-gpu)")]


def test_cuda_is_really_active_and_picks_the_float16_variant():
    clf = Classifier(providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert clf.providers[0] == "CUDAExecutionProvider" and clf.spec.precision == "float16"


def test_cuda_float32_matches_cpu():
    # float32 really is float32 on CUDA (TF32 off): with TF32 this differed by 1.2e-3 on an H100
    cuda = Classifier(providers=["CUDAExecutionProvider"], precision="float32")
    cpu = Classifier(providers=["CPUExecutionProvider"], precision="float32")
    for a, b in zip(cuda.classify(SAMPLES), cpu.classify(SAMPLES)):
        assert a.label == b.label
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) < 1e-4


def test_float16_on_cuda_agrees_and_heatmaps_come_back():
    half = Classifier(providers=["CUDAExecutionProvider"], precision="float16", heatmaps=True)
    full = Classifier(providers=["CPUExecutionProvider"], precision="float32")
    for a, b in zip(half.classify(SAMPLES), full.classify(SAMPLES)):
        assert a.label == b.label and a.heatmap is not None and a.heatmap.max() == 1.0


def test_pipeline_under_several_threads():
    clf = Classifier(providers=["CUDAExecutionProvider"], batch_size=4)
    expected = [r.probabilities for r in clf.classify(SAMPLES * 4)]
    out = run_threads(lambda k: [r.probabilities
                                 for r in clf.classify(SAMPLES * 4, batch_size=2 + k)], 4)
    for k in range(4):
        for a, b in zip(out[k], expected):
            assert np.allclose([a[c] for c in a], [b[c] for c in b], atol=1e-3)
