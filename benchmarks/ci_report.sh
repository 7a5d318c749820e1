#!/usr/bin/env bash
# Latency and parity report for CI on a CPU: PE-Spatial-T16-512 with random weights, every path that
# runs on a CPU, at batch 1 and 2 on one thread: torch fp32 and bf16 (autocast), onnxruntime fp32 and
# int8, OpenVINO fp32, bf16 and int8 (bf16 only where the CPU has bf16 units; pairs that cannot run
# are skipped and listed in the report). Latency is compared as a ratio to torch fp32 in the same
# run, with a threshold generous enough for noisy shared machines; every artifact must meet its
# parity threshold on every CPU runtime that opens it. Writes artifacts/ci/latency.{json,md,png} and
# parity.{json,md}, and both tables to the GitHub job summary when $GITHUB_STEP_SUMMARY is set.
# Refresh (or add) this CPU's baseline with: bash benchmarks/ci_report.sh --refresh
set -euo pipefail
cd "$(dirname "$0")/.."
out=artifacts/ci
# One baseline per CPU kind: the runtimes' ratios to torch differ between CPUs (onnxruntime fp32 ran at
# 0.49x torch on an EPYC with avx_vnni and at 0.80x on one without), so only a same-kind run compares.
baseline=benchmarks/baseline/ci_latency.$(python -c "from pe_export.runners.device import cpu_kind; print(cpu_kind())").json
mkdir -p "$out"
export COLUMNS=160
# Rows are timed round-robin (--interleave), so a change in the machine's load reaches all of them
# alike, and on one thread each: on a CPU shared with other jobs, threads that wait for each other
# stall whenever one of them loses its core, by amounts that differ per runtime. T16 here, with a
# CPU-burning process beside it: at 1 thread every ratio to torch held (onnxruntime 0.48 and 0.48,
# OpenVINO int8 0.25 and 0.26); at 2 threads they doubled (OpenVINO int8 0.27 -> 0.59).
pe=(python -m pe_export.cli)  # this checkout's package, whatever is installed
variant=(-v PE-Spatial-T16-512 --random-init)
gate=(--baseline "$baseline" --compare ratio --max-regression 60)
if [ "${1:-}" = "--refresh" ]; then
  gate=()
elif [ ! -f "$baseline" ]; then
  echo "no latency baseline for this CPU ($baseline): the report is written ungated; add one with --refresh"
  gate=()
fi
status=0  # a regression or a parity miss fails the job, after both tables are written
"${pe[@]}" bench "${variant[@]}" --backends torch,onnxruntime,openvino --precision fp32,bf16,int8 --batch 1,2 \
  --interleave --warmup 2 --iters 10 --threads 1 --json "$out/latency.json" --md "$out/latency.md" --plot "$out/latency.png" \
  "${gate[@]}" || status=$?
[ "${1:-}" = "--refresh" ] && [ "$status" = 0 ] && cp "$out/latency.json" "$baseline"
"${pe[@]}" parity "${variant[@]}" --backends onnxruntime,openvino --synthetic 4 --threads 1 \
  --json "$out/parity.json" --md "$out/parity.md" || status=$?
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
  for table in "$out/latency.md" "$out/parity.md"; do
    [ -f "$table" ] && { cat "$table"; echo; } >> "$GITHUB_STEP_SUMMARY"
  done
  [ -f "$out/latency.png" ] && echo "Throughput plot: the cpu-latency-parity artifact, latency.png" >> "$GITHUB_STEP_SUMMARY"
fi
exit "$status"
