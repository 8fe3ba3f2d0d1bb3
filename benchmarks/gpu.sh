#!/usr/bin/env bash
# GPU benchmark: ResNet18/ResNet50 training at 512 px, the lab's way vs the engine's defaults, and the data
# loader alone, on a synthetic set of 5,000 images prepared at 512 px. At most ~8 minutes on one NVIDIA GPU.
#
#   benchmarks/gpu.sh [RESULTS.json] [gpu_bench.py options, e.g. --dry-run]
#
# Uses the machine's own Python and PyTorch (torch >= 2.11, torchvision, Pillow, NumPy, PyYAML, scikit-learn,
# tqdm; $PYTHON, default python3) and installs nothing; runs from the source tree with PYTHONPATH=src.
# Results: RESULTS.json, else $OUT/gpu_bench.json, else gpu_bench.json in the repository root, rewritten after
# every part, so a kill keeps what was measured; the synthetic set goes to gpu_bench_data/ beside it (--workdir).
# Relative paths are the current folder's, wherever the script is run from.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-$root}/gpu_bench.json"
if [[ $# -gt 0 && "$1" != -* ]]; then out="$1"; shift; fi
mkdir -p "$(dirname "$out")"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
limit="${GPU_BENCH_LIMIT:-470}"  # seconds for the whole run; each part also has its own limit
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout --kill-after=15 "$limit" "${PYTHON:-python3}" "$root/benchmarks/gpu_bench.py" --out "$out" "$@"
rc=$?
[[ $rc -eq 124 || $rc -eq 137 ]] && echo "gpu.sh: stopped after ${limit} s; partial results in $out" >&2
exit $rc
