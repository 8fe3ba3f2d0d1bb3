#!/usr/bin/env bash
# Val-only probes of configs/eyepacs256.yaml on one GPU, many runs at once (docs/eyepacs256.md, "Smaller
# inputs, longer schedules and eye pairing at full length"); test is never read.
#
#   benchmarks/gpu_probes.sh sizes|long-pair [DATA]     (DATA: default ../shared/data/eyepacs-256)
#
# sizes:     96 px x 99 epochs, 112 x 90, 128 x 72 (equal cost on 2 CPU cores) on (split 0, seed 0),
#            (split 0, seed 1) and (split 1, seed 0): 9 runs, 288 s on one H200.
# long-pair: 144 epochs, and --pair-eyes at 72, on split 0 with seeds 0 and 1: 4 runs, 281 s.
# Uses the machine's Python and PyTorch, from the source tree; runs in $WORK/PROBE (default /tmp/probes; a re-run
# starts it afresh), the table and curves in ${OUT:-.}/probes-PROBE.json; exits non-zero if a run failed (its log
# is beside it).
set -uo pipefail
probe=${1:?sizes or long-pair}
case $probe in sizes|long-pair) ;; *) echo "unknown probe $probe: sizes or long-pair" >&2; exit 2 ;; esac
data=$(realpath -m "${2:-$(dirname "$0")/../../shared/data/eyepacs-256}")
work=$(realpath -m "${WORK:-/tmp/probes}/$probe"); out=$(realpath -m "${OUT:-.}/probes-$probe.json")
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
[ -d "$data" ] || { echo "$data: no such folder; pass DATA (the eyepacs-256 folder)" >&2; exit 2; }
"${PYTHON:-python3}" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" \
  || { echo "no CUDA device: these probes train 4-9 recipe runs at once, for a GPU" >&2; exit 2; }
mkdir -p "$(dirname "$out")"
pids=()
run() {  # NAME OPTION...
  local name=$1; shift
  "${PYTHON:-python3}" -m retinopathy train -c configs/eyepacs256.yaml --data "$data" --eval-splits val -j 2 \
    --out "$work/$name" --quiet "$@" > "$work/$name.log" 2>&1 &
  pids+=($!)
}
rm -rf "$work" && mkdir -p "$work"  # a re-run redoes the probe (train refuses to start a run over an old one)
case $probe in
  sizes) for pair in "0 0" "0 1" "1 0"; do read -r split seed <<< "$pair"
           for se in "96 99" "112 90" "128 72"; do read -r size epochs <<< "$se"
             run "s${size}_split${split}_seed$seed" --image-size "$size" --epochs "$epochs" --split-seed "$split" --seed "$seed"
           done; done ;;
  long-pair) for seed in 0 1; do
               run "long_split0_seed$seed" --epochs 144 --seed "$seed"
               run "pair_split0_seed$seed" --pair-eyes --seed "$seed"
             done ;;
esac
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
"${PYTHON:-python3}" benchmarks/val_curves.py "$work"/*/ --json "$out"
(( failed == 0 )) || { echo "$failed run(s) failed; see the logs in $work" >&2; exit 1; }
