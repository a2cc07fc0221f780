#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) with its defaults: run from the repository root on a CUDA machine.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -m benchmarks.gpu_check "$@"
