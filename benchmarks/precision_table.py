"""Precision variants of one variant on onnxruntime CPU: file size, latency, parity, and the cost
of making each (wall time of `pe-export quantize`, one fresh process each, and the largest
resident set any process of it reached, as the kernel records it: see measured.py).

    python benchmarks/precision_table.py --variant L14 --samples 32 --iters 5

Latency is measured round-robin in one process at the same thread count, so the ratios to the
fp32 ONNX are fair on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from measured import run_measured  # beside this script
from pe_export.bench.latency import wall_ms
from pe_export.report import summarize
from pe_export.precisions import PRECISIONS as TABLE
from pe_export.runners.onnxruntime import OrtRunner
from pe_export.validate import synthetic_inputs
from pe_export.variants import get_variant

PRECISIONS = tuple(p.name for p in TABLE.values() if p.kind != "reference")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="L14")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    parser.add_argument("--fresh", action="store_true", help="export the fp32 ONNX again even if present")
    parser.add_argument("--make", default=",".join(PRECISIONS), help="precisions to (re)make; others are reused if present")
    args = parser.parse_args()
    variant = get_variant(args.variant)
    folder = args.out / f"precision-{variant.name}"
    folder.mkdir(parents=True, exist_ok=True)
    profile = folder / "profile.yaml"
    profile.write_text(yaml.safe_dump({
        "name": "bench-cpu", "variant": variant.name, "export": {"target": "ort"},
        "calibration": {"source": "synthetic", "samples": args.samples, "batch_size": 2, "method": "entropy"},
        "quantization": {"int8": {"exclude": ["^conv1/"]}, "fp8": {"exclude": ["^conv1/"]}},
    }))
    fp32 = folder / f"{variant.name}.fp32.onnx"
    cost = {"fp32": run_measured(["onnx", "-v", variant.name, "--random-init", "--target", "ort", "-o", str(fp32)])
            if args.fresh or not fp32.exists() else {"seconds": None, "code": 0}}
    paths = {"fp32": fp32}
    for precision in PRECISIONS:
        path = folder / f"{variant.name}.{precision}.onnx"
        paths[precision] = path
        if precision not in args.make.split(",") and path.exists():
            cost[precision] = {"seconds": None, "code": 0}  # made by an earlier run; its manifest has the figures
            continue
        cost[precision] = run_measured(["quantize", "-v", variant.name, "--random-init", "--precision", precision,
                                        "--profile", str(profile), "-o", str(path)])
        if cost[precision]["code"]:
            print(f"quantize {precision} failed: {cost[precision]['error']}", file=sys.stderr)

    runnable = {p: path for p, path in paths.items() if TABLE[p].runs_on_ort_cpu and path.exists()}
    runners = {p: OrtRunner(path, threads=args.threads) for p, path in runnable.items()}
    x = synthetic_inputs(variant, 1).batch
    for runner in runners.values():
        runner.run(x)
    samples: dict[str, list[float]] = {p: [] for p in runners}
    for _ in range(args.iters):
        for p, runner in runners.items():
            samples[p].append(wall_ms(lambda r=runner: r.run(x)))
    stats = {p: summarize(s) for p, s in samples.items()}

    rows = []
    for p, path in paths.items():
        manifest = json.loads(path.with_name(path.name + ".json").read_text()) if path.exists() else {}
        parity = manifest.get("parity", {})
        size = sum(f.stat().st_size for f in path.parent.glob(path.name + "*") if not f.name.endswith(".json"))
        rows.append({
            "precision": p, "file_mb": round(size / 2**20, 1), "p50_ms": stats[p].p50 if p in stats else None,
            "ratio_vs_fp32": stats[p].p50 / stats["fp32"].p50 if p in stats else None,
            "cosine_mean": parity.get("cosine_mean"), "cosine_min": parity.get("cosine_min"), "max_abs": parity.get("max_abs"),
            "note": parity.get("note"), "make_seconds": cost[p]["seconds"] or manifest.get("seconds"),
            "make_max_rss_gib": cost[p].get("max_rss_gib"), "ok": cost[p]["code"] == 0,
        })
    (folder / "precision_table.json").write_text(json.dumps({"variant": variant.name, "threads": args.threads,
                                                             "iters": args.iters, "rows": rows}, indent=2))
    print(f"\n{variant.name}, onnxruntime CPU, batch 1, {args.threads} threads, {args.iters} timed runs; "
          f"calibration {args.samples} synthetic samples\n")
    print("| precision | file MB | p50 ms | vs fp32 ONNX | token cosine mean | min | max abs | make s | make max RSS GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
        print(f"| {r['precision']} | {r['file_mb']} | {f(r['p50_ms'], '.0f')} | {f(r['ratio_vs_fp32'], '.2f')} | "
              f"{f(r['cosine_mean'], '.5f') if r['note'] is None else r['note']} | {f(r['cosine_min'], '.5f')} | "
              f"{f(r['max_abs'], '.3g')} | {r['make_seconds']} | {f(r['make_max_rss_gib'], '.2f')} |")


if __name__ == "__main__":
    main()
