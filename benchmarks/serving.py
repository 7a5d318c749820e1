"""The serving target: an int8 artifact served on the CPU by `pe-export serve` (a real Triton
server, pe-export's onnxruntime runner behind its python backend) against the same runner called
directly in a loop.

    python benchmarks/serving.py --variant L14                  # the target: L14 int8, concurrency 4
    python benchmarks/serving.py --variant PE-Spatial-T16-512   # a quick check

Targets, at --concurrency 4 with one image per request: served throughput >= 0.9x the runner's own
in a loop at the batch the server forms (--max-batch, default the concurrency), and the server's
resident memory (the peak of tritonserver and its python backend stub together, sampled every 0.2 s
under load)
<= 1.5x the artifact's weights (its files' bytes). Random weights; the int8 ONNX is made or reused
as `pe-export quantize -v L14 --random-init --precision int8 --profile pe-lang-l14-datacenter` makes
it (L14's default profile; other variants: the onnxruntime export). Writes serving_<variant>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

from pe_export.manifests import read_manifest
from pe_export.memory import release_memory
from pe_export.runners import open_runner
from pe_export.serving.loadtest import request_batch, run_level, served_model
from pe_export.serving.repository import ServingOptions
from pe_export.serving.server import ServerSettings, free_ports, running_server
from pe_export.validate import BENCH_SEED, seeded_batch
from pe_export.variants import get_variant
from measured import made_artifact, tree_rss  # beside this script

MIN_THROUGHPUT_RATIO, MAX_RSS_OVER_WEIGHTS = 0.9, 1.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="L14")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--profile", help="profile name or YAML (default: pe-lang-l14-datacenter for L14)")
    parser.add_argument("--artifact", type=Path, help="an existing artifact of the variant to serve instead")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-batch", type=int, help="the server's largest batch, and the direct loop's batch "
                        "(default: --concurrency); on CPUs where batching does not pay, 1")
    parser.add_argument("--seconds", type=float, default=30, help="timed seconds, direct and served each")
    parser.add_argument("--queue-delay-us", type=int, default=20000, help="dynamic batching's wait for a full batch")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    args = parser.parse_args()

    variant = get_variant(args.variant)
    artifact = args.artifact or made_artifact(variant.name, args.precision, args.profile)
    weights = read_manifest(artifact).file_bytes()
    args.max_batch = args.max_batch or args.concurrency
    direct = _direct_ips(artifact, variant.name, args.max_batch, args.seconds)
    served, peak_rss = _served(artifact, args)
    result = {
        "variant": variant.name, "artifact": artifact.name, "concurrency": args.concurrency, "max_batch": args.max_batch,
        "direct_ips": round(direct, 3), "served_ips": round(served.throughput_ips, 3),
        "throughput_ratio": round(served.throughput_ips / direct, 3), "served": served.model_dump(),
        "weights_mib": round(weights / 2**20, 1), "server_peak_rss_mib": round(peak_rss / 2**20, 1),
        "rss_over_weights": round(peak_rss / weights, 2),
    }
    result["passed"] = (served.errors == 0 and result["throughput_ratio"] >= MIN_THROUGHPUT_RATIO
                        and result["rss_over_weights"] <= MAX_RSS_OVER_WEIGHTS)
    _print(result, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"serving_{variant.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(0 if result["passed"] else 1)


def _direct_ips(artifact: Path, variant: str, batch: int, seconds: float) -> float:
    """Images per second of the runner itself, in a loop at the batch the server forms."""
    images = seeded_batch(get_variant(variant), batch, BENCH_SEED)
    with open_runner(artifact) as runner:
        runner.run(images)
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            runner.run(images)
            runs += 1
        elapsed = time.perf_counter() - start
    release_memory()
    return runs * batch / elapsed


def _served(artifact: Path, args: argparse.Namespace):
    """The load test's row at the concurrency, and the server tree's peak RSS during it."""
    options = ServingOptions(name="pe", instance_kind="cpu", max_batch_size=args.max_batch,
                             preferred_batch_sizes=[args.max_batch], max_queue_delay_us=args.queue_delay_us)
    http_port, grpc_port, metrics_port = free_ports(3)
    with running_server(artifact, options, ServerSettings(http_port=http_port, grpc_port=grpc_port,
                                                          metrics_port=metrics_port)) as server:
        model, _ = served_model(server.url, server.model)
        stop, peak = threading.Event(), [tree_rss(server.process.pid)]

        def sample() -> None:
            while not stop.wait(0.2):
                peak[0] = max(peak[0], tree_rss(server.process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        row = run_level(server.url, model, request_batch(model, 1), args.concurrency, args.seconds, threading.Event())
        stop.set()
        sampler.join()
    return row, peak[0]


def _print(r: dict, args: argparse.Namespace) -> None:
    print(f"\n{r['variant']} {r['artifact']}, concurrency {r['concurrency']}, {args.seconds:g} s each\n")
    print("| path | img/s | p50 ms | p99 ms | errors | peak RSS MiB |\n|---|---|---|---|---|---|")
    print(f"| runner in a loop, batch {r['max_batch']} | {r['direct_ips']:.2f} | | | | |")
    lat = r["served"]["latency_ms"] or {}
    print(f"| pe-export serve, {r['concurrency']} clients x 1 image, max batch {r['max_batch']} | {r['served_ips']:.2f} | {lat.get('p50', 0):.0f} | "
          f"{lat.get('p99', 0):.0f} | {r['served']['errors']} | {r['server_peak_rss_mib']:.0f} |")
    print(f"\nthroughput ratio {r['throughput_ratio']:.2f} (target >= {MIN_THROUGHPUT_RATIO}); server RSS "
          f"{r['rss_over_weights']:.2f}x the weights ({r['weights_mib']:.0f} MiB; target <= {MAX_RSS_OVER_WEIGHTS}x): "
          f"{'PASS' if r['passed'] else 'MISS'}")


if __name__ == "__main__":
    main()
