#!/bin/bash
# GPU checks and benchmarks in one call on a CUDA machine without network. onnxruntime-gpu must
# already be importable (PYTHONPATH) and full-resolution scans lie under $XRAY_DATA/fullres.
# Usage, from the project root:  XRAY_DATA=/path/to/data benchmarks/gpu.sh OUT_DIR
# It checks the setup first (GPU, provider, one CUDA session) and stops there if that fails.
set -euo pipefail
out=${1:?usage: benchmarks/gpu.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 setup.py -q build_ext --inplace > "$out/build.log" 2>&1
python3 - <<'PY'
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.get_available_providers())
import glob
from xray_infer import Classifier
clf = Classifier(providers=["CUDAExecutionProvider"])
labels = [r.label or r.error for r in clf.classify(sorted(glob.glob("xray_infer/samples/*.jpeg")))]
print("CUDA session:", clf.providers, clf.spec.precision, labels)
PY
python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -4 ||
  echo "GPU TESTS FAILED (benchmarks run anyway)"
cuda=CUDAExecutionProvider,CPUExecutionProvider
python3 -m benchmarks inference --providers $cuda --device cuda --batch-sizes 1 32 256 1024 \
  --json "$out/inference-cuda.json"
python3 -m benchmarks e2e --providers $cuda --device cuda --batch-size 256 --repeat 3 --cycle 10 \
  --json "$out/e2e-cuda.json"
python3 -m benchmarks decode --repeat 3 --json "$out/decode-gpu-host.json"
