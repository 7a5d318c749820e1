#!/usr/bin/env bash
# Latency and parity report for CI on a CPU: PE-Spatial-T16-512 with random weights, torch against
# onnxruntime at batch 1 and 2. Latency is compared as a ratio to torch fp32 in the same run, with a
# threshold generous enough for noisy shared machines; parity must meet the fp32 threshold.
# Refresh the baseline with: bash benchmarks/ci_report.sh --refresh
set -euo pipefail
cd "$(dirname "$0")/.."
out=artifacts/ci
baseline=benchmarks/baseline/ci_latency.json
mkdir -p "$out"
export COLUMNS=160
gate=(--baseline "$baseline" --compare ratio --max-regression 60)
[ "${1:-}" = "--refresh" ] && gate=()
pe-export bench -v PE-Spatial-T16-512 --random-init --backends torch,onnxruntime --batch 1,2 \
  --warmup 2 --iters 10 --threads 2 --json "$out/latency.json" --md "$out/latency.md" "${gate[@]}"
[ "${1:-}" = "--refresh" ] && cp "$out/latency.json" "$baseline"
pe-export parity -v PE-Spatial-T16-512 --random-init --synthetic 4 --json "$out/parity.json" --md "$out/parity.md"
