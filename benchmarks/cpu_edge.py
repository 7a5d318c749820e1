"""Every way pe-export runs a variant on a CPU, side by side in one interleaved run.

Paths: torch eager fp32 and bf16 autocast (what users get without exporting anything), onnxruntime
fp32 and int8 (Q/DQ ONNX), OpenVINO IR fp32, bf16 (where the CPU has bf16 units) and int8. For each:
latency at batch 1 and throughput at every batch size, as ratios to torch fp32 in the same rounds,
and token cosine against torch fp32. For each OpenVINO IR: the cost of `pe-export openvino` (wall
time and the peak RSS of its process tree, one fresh process each, from an existing ONNX). Then the
CPU edge targets are checked, and whether the profile's `deploy` is the fastest path that passes.

    python benchmarks/cpu_edge.py --variant L14 --profile pe-lang-l14-cpu-edge
    python benchmarks/cpu_edge.py --variant PE-Spatial-T16-512 --batches 1,2 --iters 5   # a quick check

The ONNX files are made in this process (or reused while their manifests match); the IR exports run
in their own processes; then `bench --interleave` times every runner round-robin in this process at
the same thread count, so all of them see the same machine load. Writes cpu_edge_<variant>.json and
.md under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pe_export.bench.bench import BenchSettings, bench_rows
from pe_export.model import load_model
from pe_export.model.head import OutputHead
from pe_export.openvino.ir import ir_path
from pe_export.precision.profiles import cpu_profile, find_profile
from pe_export.pipeline import Plan
from pe_export.report import LatencyRow
from pe_export.runners import BACKENDS, Runner, open_runner
from pe_export.runners.device import cpu_name
from pe_export.validate import ParityFigures, compare, synthetic_inputs
from pe_export.versions import versions
from measured import run_measured  # beside this script

# the targets for the best path pe-export ships (batch 1 against torch eager fp32, same run)
MAX_RATIO, MIN_COSINE = 0.25, 0.999
MAX_IR_SECONDS, MAX_IR_RSS_OVER_WEIGHTS = 120, 2.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="L14")
    parser.add_argument("--profile", help="profile name or YAML (default: the onnxruntime export, synthetic calibration)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5, help="timed rounds at batch 1")
    parser.add_argument("--batched-iters", type=int, default=3, help="timed rounds at the larger batch sizes")
    parser.add_argument("--parity-samples", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    loaded = load_model(args.variant, random_init=True)
    variant = loaded.variant
    profile = find_profile(args.profile) if args.profile else cpu_profile(variant.name)
    print(f"{variant.name} on {cpu_name()}, profile {profile.name}", flush=True)
    plan = Plan.of(loaded, profile, _say)
    onnx = {p: plan.precision(p).path for p in ("fp32", "int8")}
    costs = {p: _ir_cost(args, variant, profile, p) for p in ("fp32", "bf16", "int8") if BACKENDS["openvino"].runs(p)}

    head = OutputHead(loaded.model, variant.default_output).eval()
    parity_batch = synthetic_inputs(variant, args.parity_samples).batch
    reference = _one_by_one(open_runner(head), parity_batch)
    cosines: dict[tuple[str, str], ParityFigures] = {}

    def open_scored(backend: str, precision: str) -> Runner:
        """The runner of a path, scored against torch fp32 the first time it is opened."""
        source = {"torch": head, "onnxruntime": onnx.get(precision), "openvino": ir_path(variant, profile, precision)}
        runner = open_runner(source[backend], backend=backend, precision=precision if backend == "torch" else None,
                             threads=args.threads)
        if (backend, precision) not in cosines:
            cosines[backend, precision] = compare(reference, _one_by_one(runner, parity_batch))
        return runner

    built = ["torch", "onnxruntime", *(["openvino"] if all(c["code"] == 0 for c in costs.values()) else [])]
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    for chosen, iters in ((batches[:1], args.iters), (batches[1:], args.batched_iters)):
        if chosen:
            _say(f"timing batch {', '.join(map(str, chosen))}: {args.warmup} warm-up and {iters} rounds of every path")
            settings = BenchSettings(backends=built, precisions=["fp32", "bf16", "int8"], batches=chosen,
                                     warmup=args.warmup, iters=iters, threads=args.threads, interleave=True)
            rows += list(bench_rows(loaded, settings, open_scored))

    report = _report(args, variant, profile, rows, cosines, batches, costs)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"cpu_edge_{variant.name}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = _markdown(report)
    stem.with_suffix(".md").write_text(markdown + "\n")
    print("\n" + markdown)


def _say(step: str) -> None:
    print(f"  {step}", flush=True)


def _ir_cost(args, variant, profile, precision: str) -> dict:
    """`pe-export openvino` in a fresh process, from the ONNX made above: wall time and peak RSS (of its
    processes together: the command and its workers)."""
    _say(f"pe-export openvino --precision {precision}")
    cost = run_measured(["openvino", "-v", variant.name, "--random-init", "--precision", precision,
                         *(["--profile", args.profile] if args.profile else [])])
    path = ir_path(variant, profile, precision)
    manifest = json.loads(path.with_name(path.name + ".json").read_text()) if cost["code"] == 0 else {}
    weights_gib = variant.parameters * 4 / 2**30
    return {**cost, "rss_over_weights": round(cost["tree_rss_gib"] / weights_gib, 2),
            "ir_mib": round(sum(f["bytes"] for f in manifest.get("files", {}).values()) / 2**20, 1),
            "inference_precision": manifest.get("inference_precision")}


def _one_by_one(runner: Runner, batch: np.ndarray) -> np.ndarray:
    return np.concatenate([runner.run(x[None]) for x in batch])


def _report(args, variant, profile, latency: list[LatencyRow], cosines: dict, batches: list[int], costs: dict) -> dict:
    timed = {(r.backend, r.precision, r.batch): r for r in latency}
    rows = []
    for backend, precision in cosines:
        threshold, figures = profile.threshold(precision), cosines[backend, precision]
        row = {b: timed[backend, precision, b] for b in batches}
        rows.append({
            "runtime": backend, "precision": precision, "threshold": threshold,
            "cosine_mean": figures.cosine_mean, "cosine_min": figures.cosine_min,
            "passes": figures.cosine_mean >= threshold,
            "latency_ms": {b: r.latency_ms.model_dump() for b, r in row.items()},
            "ratio_vs_torch_fp32": {b: r.latency_ms.p50 / timed["torch", "fp32", b].latency_ms.p50 for b, r in row.items()},
            "throughput_ips": {b: r.throughput_ips for b, r in row.items()},
        })
    return {
        "schema": "pe-export/cpu-edge/1", "variant": variant.name, "device": cpu_name(), "versions": versions(
            ("pe-export", "torch", "onnxruntime", "openvino")),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "profile": {"name": profile.name, "deploy": profile.deploy.model_dump() if profile.deploy else None},
        "rows": rows, "ir_export": costs, "targets": _targets(rows, costs, profile, batches[0]),
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _targets(rows: list[dict], costs: dict, profile, batch: int) -> list[dict]:
    """The CPU edge targets, each with the figure it was judged on."""
    shipped = [r for r in rows if r["runtime"] != "torch" and r["passes"]]
    if not shipped:
        return [{"target": "an exported path passes its parity threshold", "met": False, "figure": "none"}]
    best = min(shipped, key=lambda r: r["ratio_vs_torch_fp32"][batch])
    autocast = next(r for r in rows if (r["runtime"], r["precision"]) == ("torch", "bf16"))
    checks = [
        (f"best path ({best['runtime']} {best['precision']}) at batch {batch} <= {MAX_RATIO}x torch fp32",
         best["ratio_vs_torch_fp32"][batch] <= MAX_RATIO, f"{best['ratio_vs_torch_fp32'][batch]:.3f}x"),
        (f"best path token cosine mean >= {MIN_COSINE}", best["cosine_mean"] >= MIN_COSINE, f"{best['cosine_mean']:.5f}"),
        ("best path faster than torch bf16 autocast",
         best["latency_ms"][batch]["p50"] < autocast["latency_ms"][batch]["p50"],
         f"{best['latency_ms'][batch]['p50']:.0f} against {autocast['latency_ms'][batch]['p50']:.0f} ms"),
    ]
    if profile.deploy:
        chosen = f"{profile.deploy.runtime} {profile.deploy.precision}"
        checks.append((f"profile {profile.name} deploys the best path ({chosen})",
                       chosen == f"{best['runtime']} {best['precision']}", chosen))
    for precision, cost in costs.items():
        checks.append((f"IR export {precision} <= {MAX_IR_SECONDS} s and <= {MAX_IR_RSS_OVER_WEIGHTS}x the fp32 weights",
                       cost["code"] == 0 and cost["seconds"] <= MAX_IR_SECONDS
                       and cost["rss_over_weights"] <= MAX_IR_RSS_OVER_WEIGHTS,
                       f"{cost['seconds']} s, {cost['tree_rss_gib']} GiB = {cost['rss_over_weights']}x"))
    return [{"target": name, "met": bool(met), "figure": figure} for name, met, figure in checks]


def _markdown(report: dict) -> str:
    batches = list(report["rows"][0]["latency_ms"])
    first = batches[0]
    head = (f"| runtime | precision | batch {first} p50 ms | vs torch fp32 | "
            + " | ".join(f"batch {b} img/s" for b in batches) + " | token cosine mean | min | passes |")
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    lines = [f"**{report['variant']}** on {report['device']}, {report['settings']['threads']} threads, "
             f"one interleaved run ({versions})", "", head, "|" + "---|" * (7 + len(batches))]
    for r in report["rows"]:
        lines.append(f"| {r['runtime']} | {r['precision']} | {r['latency_ms'][first]['p50']:.0f} | "
                     f"{r['ratio_vs_torch_fp32'][first]:.2f} | "
                     + " | ".join(f"{r['throughput_ips'][b]:.2f}" for b in batches)
                     + f" | {r['cosine_mean']:.5f} | {r['cosine_min']:.5f} | {'yes' if r['passes'] else 'NO'} |")
    lines += ["", "| OpenVINO IR | float ops in | wall s | peak RSS GiB, all processes (largest one) | RSS / fp32 weights "
              "| IR MiB |", "|---|---|---|---|---|---|"]
    for precision, c in report["ir_export"].items():
        lines.append(f"| {precision} | {c['inference_precision']} | {c['seconds']} | {c['tree_rss_gib']} ({c['max_rss_gib']}) | "
                     f"{c['rss_over_weights']} | {c['ir_mib']} |")
    lines += ["", "| target | met | figure |", "|---|---|---|"]
    lines += [f"| {t['target']} | {'yes' if t['met'] else 'NO'} | {t['figure']} |" for t in report["targets"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
