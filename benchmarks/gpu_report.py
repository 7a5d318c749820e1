"""On a machine with an NVIDIA GPU: engines of every precision for one variant, then one parity
table and one latency table (torch eager on CUDA, torch.compile, TensorRT engines).

    python benchmarks/gpu_report.py --variant L14 --checkpoint PE-Lang-L14-448.pt --batch 1,8,32
    python benchmarks/gpu_report.py --variant L14 --random-init --torch-only   # no TensorRT installed

Engines are built (or reused) through `pe-export trt`'s library path, so the table shows exactly
what users get. Writes JSON and Markdown next to each other under --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pe_export.bench.bench import BenchSettings, run_bench
from pe_export.bench.parity import run_parity
from pe_export.model import load_model
from pe_export.precision.profiles import default_profile, find_profile
from pe_export.precision.quantize import precision_onnx
from pe_export.precisions import PRECISIONS
from pe_export.report import to_markdown
from pe_export.trt.engine import build_settings, ensure_engine


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
    if not args.torch_only:
        chosen = find_profile(args.profile) if args.profile else default_profile(loaded.variant.name)
        engines = []
        for precision in PRECISIONS:
            onnx_path = precision_onnx(loaded, precision, chosen, progress=print)
            settings = build_settings(chosen, precision, batch_min=1, batch_opt=max(batches), batch_max=max(batches))
            engines.append(ensure_engine(onnx_path, settings, progress=print).path)
        parity = run_parity(loaded, engines, synthetic=8)
        parity.write(args.out / "parity.json", args.out / "parity.md")
        print(to_markdown(parity))
        backends.append("tensorrt")

    settings = BenchSettings(backends=backends, precisions=["fp32", "bf16"] if args.torch_only else list(PRECISIONS),
                             batches=batches, warmup=5, iters=args.iters, device="cuda")
    latency = run_bench(loaded, settings, progress=print)
    latency.write(args.out / "latency.json", args.out / "latency.md")
    print(to_markdown(latency))


if __name__ == "__main__":
    main()
