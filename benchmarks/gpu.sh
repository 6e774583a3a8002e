#!/bin/bash
# GPU benchmarks in one call on a CUDA machine without network. onnxruntime-gpu must already be
# unpacked (its parts collected in /tmp/parts, see below) and the full-resolution scans copied
# under $XRAY_DATA/fullres. Usage, from the project root:
#   cat /tmp/parts/part* | python3 -c "import sys,tarfile; \
#     tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp/site')"
#   XRAY_DATA=/path/to/data PYTHONPATH=/tmp/site benchmarks/gpu.sh OUT_DIR
set -euo pipefail
out=${1:?usage: benchmarks/gpu.sh OUT_DIR}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 setup.py -q build_ext --inplace > "$out/build.log" 2>&1
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -3
export PYTHONUNBUFFERED=1
python3 -m benchmarks inference --providers CUDAExecutionProvider,CPUExecutionProvider \
  --device cuda --batch-sizes 1 32 256 1024 --json "$out/inference-cuda.json"
python3 -m benchmarks e2e --providers CUDAExecutionProvider,CPUExecutionProvider \
  --device cuda --batch-size 256 --repeat 3 --json "$out/e2e-cuda.json"
python3 -m benchmarks decode --repeat 3 --json "$out/decode-gpu-host.json"
