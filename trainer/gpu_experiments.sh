#!/bin/bash
# Run the experiment grid on a CUDA machine and pack the results into OUT/grid.tgz.
# Usage (from the project root, dataset under $XRAY_DATA):
#   XRAY_DATA=/path/to/data trainer/gpu_experiments.sh OUT [TIME_LIMIT_S] [WORKERS]
# The grid is resumable: a run that finished is not repeated when the script is run again.
set -uo pipefail
out=${1:?usage: gpu_experiments.sh OUT [TIME_LIMIT_S] [WORKERS]}
limit=${2:-450}
workers=${3:-6}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)"
python3 setup.py -q build_ext --inplace > "$out/build.log" 2>&1 || { tail -20 "$out/build.log"; exit 1; }
export PYTHONUNBUFFERED=1 TRAINER_THREADS=2
timeout "$limit" python3 -W ignore -m trainer experiments --out runs/grid --device cuda \
  --workers "$workers" --keep-checkpoints 2 2>&1 | tee "$out/grid.log"
tar czf "$out/grid.tgz" -C runs grid
ls -la "$out"
