#!/usr/bin/env bash
# The GPU check: what a CUDA machine does with this package, in one short run.
#
#   benchmarks/gpu_check.sh OUTPUT_FOLDER            # on one GPU: a few minutes on an H100
#   benchmarks/gpu_check.sh --dry-run OUTPUT_FOLDER  # on CPU, tiny settings (a test runs this)
#
# It runs, writing OUTPUT_FOLDER/gpu_check.md (and the benchmarks' JSON):
#  1. the bench (python -m speechbrain_petl.perf.bench; AST-base, random
#     weights, offline) in bf16 (frozen linears stored in bf16) for full
#     fine-tuning, LoRA, the bottleneck and the Conformer adapters, at
#     Speech Commands size (100 frames, batch 128) and ESC-50 size
#     (500 frames, batch 32), with torch.compile off and on;
#  2. one epoch of the Speech Commands LoRA recipe on the shipped test
#     samples (AST-base with random weights, --precision=bf16);
#  3. the multi-task benchmark (benchmarks/multitask_serving.py --tasks=1,8).
# Run from the repository root. Each part's time is in the report.
set -euo pipefail

ARGS=("$@")
DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY_RUN=1
    shift
fi
if [[ $# -ne 1 ]]; then
    echo "usage: benchmarks/gpu_check.sh [--dry-run] OUTPUT_FOLDER" >&2
    exit 2
fi
OUT="$1"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python}"
REPORT="$OUT/gpu_check.md"
METHODS="full,lora,bottleneck,conformer"

if [[ $DRY_RUN -eq 1 ]]; then
    DEVICE=cpu
    SIZES=("64:2")
    COMPILES=("")
    BENCH_EXTRA=(--backbone-source tests/samples/tiny_ast --steps 1 --warmup 0 --inference-repeats 1 --no-isolate --no-plain)
    RECIPE_EXTRA=(--backbone_source=tests/samples/tiny_ast --device=cpu)
    MULTITASK_EXTRA=(--backbone=tiny --repeats=1)
else
    DEVICE=cuda
    SIZES=("100:128" "500:32")
    COMPILES=("" "--compile")
    BENCH_EXTRA=(--steps 5 --warmup 3 --no-plain)
    RECIPE_EXTRA=(--device=cuda:0)
    MULTITASK_EXTRA=()
fi

{
    echo "# GPU check"
    echo
    "$PYTHON" - "${ARGS[@]}" <<'EOF'
import sys

import torch

from speechbrain_petl.perf.measure import provenance, provenance_line
facts = provenance("benchmarks/gpu_check.sh", sys.argv[1:])
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (dry run on CPU)"
print(provenance_line(facts), f"GPU: {gpu}.")
EOF
    echo
} > "$REPORT"

section() {  # section TITLE SECONDS FILE
    { echo "## $1"; echo; echo "Wall time: $2 s."; echo; cat "$3"; echo; } >> "$REPORT"
}

for size in "${SIZES[@]}"; do
    frames="${size%%:*}"; batch="${size##*:}"
    for compile in "${COMPILES[@]}"; do
        tag="bench_${frames}f_b${batch}${compile:+_compile}"
        start=$SECONDS
        "$PYTHON" -m speechbrain_petl.perf.bench --methods "$METHODS" --frames "$frames" --batch-size "$batch" \
            --device "$DEVICE" --dtype bf16 $compile "${BENCH_EXTRA[@]}" \
            --json "$OUT/$tag.json" --markdown "$OUT/$tag.md" > "$OUT/$tag.log" 2>&1
        section "Bench, $frames frames, batch $batch, bf16${compile:+, torch.compile}" $((SECONDS - start)) "$OUT/$tag.md"
    done
done

start=$SECONDS
"$PYTHON" recipes/Google-speech-commands/PETL/train.py recipes/Google-speech-commands/PETL/hparams/lora_gsc.yaml \
    --data_folder=tests/samples/Google-speech-commands --pretrained=False --num_workers=0 --number_of_epochs=1 \
    --precision=bf16 --output_folder="$OUT/recipe_epoch" "${RECIPE_EXTRA[@]}" > "$OUT/recipe_epoch.log" 2>&1
tail -n 5 "$OUT/recipe_epoch/train_log.txt" > "$OUT/recipe_epoch.md"
section "One epoch of the Speech Commands LoRA recipe (test samples, bf16), its train_log.txt" \
    $((SECONDS - start)) "$OUT/recipe_epoch.md"

start=$SECONDS
"$PYTHON" benchmarks/multitask_serving.py --tasks=1,8 "${MULTITASK_EXTRA[@]}" \
    --json "$OUT/multitask.json" --markdown "$OUT/multitask.md" > "$OUT/multitask.log" 2>&1
section "Multi-task serving (benchmarks/multitask_serving.py --tasks=1,8)" $((SECONDS - start)) "$OUT/multitask.md"

echo "Wrote $REPORT"
