"""On a machine with an NVIDIA GPU: engines of every precision for one variant, then one parity
table and one latency table (torch eager on CUDA, torch.compile, TensorRT engines).

    python benchmarks/gpu_report.py --variant L14 --checkpoint PE-Lang-L14-448.pt --batch 1,8,32
    python benchmarks/gpu_report.py --variant L14 --random-init --torch-only   # no TensorRT installed

Each precision's engine is built once, through `pe-export trt`'s library path, with the profile's
batch range widened to cover --batch; the parity table and the latency table run that same engine.
Writes JSON and Markdown next to each other under --out, and exits 1 when an engine misses its
parity threshold.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pe_export.bench.bench import BenchSettings, run_bench
from pe_export.bench.parity import run_parity
from pe_export.model import load_model
from pe_export.precision.profiles import resolve_profile
from pe_export.precisions import PRECISIONS
from pe_export.report import to_markdown
from pe_export.runners.tensorrt_env import current_gpu
from pe_export.pipeline import Plan
from pe_export.trt.engine import covering_settings, gpu_cannot_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="L14")
    parser.add_argument("--checkpoint")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--profile", default=None, help="profile for calibration and build settings")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--torch-only", action="store_true", help="skip TensorRT (not installed here)")
    parser.add_argument("--out", type=Path, default=Path("artifacts/gpu"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: this report needs one")
    loaded = load_model(args.variant, args.checkpoint, random_init=args.random_init)
    args.out.mkdir(parents=True, exist_ok=True)
    batches = [int(b) for b in args.batch.split(",")]

    backends = ["torch", "torch-compile"]
    precisions, missed = ["fp32", "bf16"], []
    if not args.torch_only:
        chosen = resolve_profile(args.profile, loaded.variant)
        gpu, precisions = current_gpu(), []
        for precision in (p for p in PRECISIONS if p in chosen.precisions):
            problem = gpu_cannot_run(precision, gpu)
            if problem:
                print(f"skipping {precision}: {problem}")
            else:
                precisions.append(precision)
        plan = Plan.of(loaded, chosen, print)
        engines = [plan.engine(p, covering_settings(chosen, p, batches)).path for p in precisions]
        parity = run_parity(loaded, engines, synthetic=8, thresholds={p: chosen.threshold(p) for p in precisions})
        parity.write(args.out / "parity.json", args.out / "parity.md")
        print(to_markdown(parity))
        missed = [row.artifact for row in parity.results if row.passed is False]
        backends.append("tensorrt")

    settings = BenchSettings(backends=backends, precisions=precisions, batches=batches, warmup=5, iters=args.iters,
                             device="cuda", profile=None if args.torch_only else args.profile)
    latency = run_bench(loaded, settings, progress=print)
    latency.write(args.out / "latency.json", args.out / "latency.md")
    print(to_markdown(latency))
    if missed:
        raise SystemExit(f"parity missed its threshold: {', '.join(missed)}")


if __name__ == "__main__":
    main()
