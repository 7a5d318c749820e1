"""Wall time, peak memory and graph size of `pe-export onnx` per target, one fresh process each.

    python benchmarks/export_cost.py --variant L14 --targets trt11,jetson
    python benchmarks/export_cost.py --variant G14 --targets trt11

Wall time covers the whole command (start-up, random weights, export, check, parity proof);
peak RSS is the exporting process's own high-water mark, set against the fp32 weight size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pe_export.variants import get_variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="L14")
    parser.add_argument("--targets", default="trt11,jetson")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    args = parser.parse_args()

    variant = get_variant(args.variant)
    weights_gb = variant.parameters * 4 / 1e9
    rows = []
    with tempfile.TemporaryDirectory(prefix="pe-export-cost-") as scratch:
        for target in args.targets.split(","):
            path = Path(scratch) / f"{variant.name}.{target}.onnx"
            command = [sys.executable, "-m", "pe_export.cli", "onnx", "-v", variant.name, "--random-init",
                       "--target", target, "-o", str(path)]
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - start
            manifest = json.loads(path.with_name(path.name + ".json").read_text())
            rows.append({
                "target": target, "wall_seconds": round(wall, 1), "export_seconds": manifest["export_seconds"],
                "peak_rss_gib": round(manifest["peak_rss_mb"] / 1024, 2),
                "rss_over_weights": round(manifest["peak_rss_mb"] * 2**20 / 1e9 / weights_gb, 2),
                "nodes": manifest["nodes"], "op_histogram": manifest["op_histogram"],
                "external_data": manifest["external_data"], "parity": manifest["parity"],
            })
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"schema": "pe-export/export-cost/1", "variant": variant.name, "weights_gb_fp32": round(weights_gb, 3),
              "results": rows}
    (args.out / f"export_cost_{variant.name}.json").write_text(json.dumps(report, indent=2))
    print(f"\n{variant.name}: fp32 weights {weights_gb:.2f} GB\n")
    print("| target | wall s | export s | peak RSS GiB | RSS / weights | nodes | parity cosine min | max abs |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | {r['wall_seconds']} | {r['export_seconds']} | {r['peak_rss_gib']} | "
              f"{r['rss_over_weights']} | {r['nodes']} | {r['parity']['cosine_min']:.7f} | {r['parity']['max_abs']:.2e} |")
    print("\nop histograms:")
    for r in rows:
        print(f"- {r['target']}: " + ", ".join(f"{op} {n}" for op, n in r["op_histogram"].items()))


if __name__ == "__main__":
    main()
