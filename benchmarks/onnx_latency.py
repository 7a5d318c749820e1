"""onnxruntime CPU latency of the exported ONNX against PyTorch eager fp32, in one run.

For each lowering (fused/decomposed RoPE x fused/decomposed attention) the script exports the
variant (or reuses an export whose manifest matches), then times torch eager and every ONNX file
round-robin at the same thread count, so the ratios are fair on a noisy machine. It prints a
Markdown table and writes JSON.

It also times the MLP's two GEMMs alone (tokens x width @ width x 4*width @ 4*width x width) on
onnxruntime in the same rounds, 20 times back to back as inside the model: the machine's fp32 GEMM
ceiling. Every row reports its achieved GFLOPS (2 x the variant's MACs per image), and the table
ends with the lowest ratio to torch that any fp32 graph could reach at that ceiling.

    python benchmarks/onnx_latency.py --variant L14 --threads 2 --iters 5
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from pe_export.bench.latency import wall_ms
from pe_export.report import summarize
from pe_export.model import load_model
from pe_export.onnx.export import export_input
from pe_export.pipeline import Plan
from pe_export.precision.profiles import ExportSection, Profile
from pe_export.runners.onnxruntime import OrtRunner
from pe_export.versions import versions

LOWERINGS = {
    "rope fused, attention fused (trt11, ort)": dict(target="trt11"),
    "rope fused, attention decomposed": dict(target="trt11", attention="decomposed"),
    "rope decomposed, attention fused": dict(target="trt11", rope="decomposed"),
    "rope decomposed, attention decomposed (opset 17: trt10, jetson)": dict(target="jetson"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="L14")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    loaded = load_model(args.variant, random_init=True)
    args.out.mkdir(parents=True, exist_ok=True)
    runners = {}
    nodes = {}
    for label, options in LOWERINGS.items():
        profile = Profile(name=label, variant=loaded.variant.name, export=ExportSection(**options))
        result = Plan.of(loaded, profile, root=args.out).fp32()  # reused while its manifest matches
        runners[label] = OrtRunner(result.path, threads=args.threads)
        nodes[label] = result.manifest.nodes
        print(f"exported {label}: {nodes[label]} nodes, {result.manifest.export_seconds} s", flush=True)

    x = export_input(loaded.variant, args.batch)
    x_np = x.numpy()
    gemm, gemm_input, gemm_flops = _gemm(loaded.variant, args.batch, args.out, args.threads)
    calls = {"torch eager fp32": lambda: _torch(loaded.model, x)}
    calls.update({label: (lambda r=runner: r.run(x_np)) for label, runner in runners.items()})
    calls[GEMM] = lambda: [gemm.run(gemm_input) for _ in range(GEMM_REPEATS)]  # hot, as inside the model
    for fn in calls.values():
        for _ in range(args.warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.iters):  # round-robin: each backend sees the same machine load
        for name, fn in calls.items():
            samples[name].append(wall_ms(fn))

    stats = {name: summarize(s) for name, s in samples.items()}
    base = stats["torch eager fp32"].p50
    model_flops = 2 * loaded.variant.macs * args.batch
    ceiling = gemm_flops * GEMM_REPEATS / stats.pop(GEMM).p50 / 1e6  # GFLOPS
    floor_ratio = model_flops / ceiling / 1e6 / base
    rows = [
        {"backend": "torch" if name.startswith("torch") else "onnxruntime CPU", "lowering": name,
         "nodes": nodes.get(name), "latency_ms": stats[name].model_dump(), "ratio_vs_torch": stats[name].p50 / base,
         "gflops": model_flops / stats[name].p50 / 1e6}
        for name in stats
    ]
    report = {
        "schema": "pe-export/onnx-latency/1", "variant": loaded.variant.name, "batch": args.batch,
        "threads": args.threads, "device": platform.processor() or platform.machine(), "versions": versions(),
        "results": rows, "gemm_ceiling_gflops": ceiling, "ratio_floor_at_ceiling": floor_ratio,
    }
    (args.out / "onnx_latency.json").write_text(json.dumps(report, indent=2))
    print(f"\n{loaded.variant.name}, batch {args.batch}, {args.threads} threads, {args.iters} timed iterations\n")
    print("| backend | lowering | nodes | p50 ms | mean ms | ratio vs torch | GFLOPS |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        lat = row["latency_ms"]
        print(f"| {row['backend']} | {row['lowering']} | {row['nodes'] or '-'} | {lat['p50']:.0f} | "
              f"{lat['mean']:.0f} | {row['ratio_vs_torch']:.2f} | {row['gflops']:.0f} |")
    print(f"\nfp32 GEMM ceiling on onnxruntime, same rounds: {ceiling:.0f} GFLOPS; a graph running all of its "
          f"{model_flops / 1e9:.0f} GFLOP at that rate would take {floor_ratio:.2f}x torch eager.")


GEMM = "fp32 GEMM ceiling"
GEMM_REPEATS = 20


def _gemm(variant, batch: int, folder: Path, threads: int):
    """The MLP's two GEMMs back to back (no bias, no activation): a model of pure fp32 GEMM work."""
    m, w, h = batch * variant.tokens, variant.width, variant.mlp_width
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, w])],
        [numpy_helper.from_array(rng.standard_normal((w, h), dtype=np.float32), "w1"),
         numpy_helper.from_array(rng.standard_normal((h, w), dtype=np.float32), "w2")],
    )
    path = folder / "gemm_ceiling.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return OrtRunner(path, threads=threads), rng.standard_normal((m, w), dtype=np.float32), 2 * 2 * m * w * h


def _torch(model, x):
    with torch.no_grad():
        return model(x)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
