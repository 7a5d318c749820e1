"""`pe-export embed` against its ceiling: the runner in a loop on pre-decoded inputs, then `embed` on this
machine, then `embed --engine ray` on a local Ray, over the same generated JPEGs, in one run.

    python benchmarks/embed.py --variant PE-Core-B16-224 --precision fp32 --images 256
    python benchmarks/embed.py --variant L14 --precision int8 --images 48

Targets: local >= 0.9x the ceiling, Ray >= 0.8x local (images per second over the whole call: opening
the runner and Ray's start included, which the ceiling's loop is not; the rates after the first shard
are reported beside, as their steady state). The peak resident memory of the
whole process tree (Ray's raylet and workers are this process's descendants) is sampled every 0.1 s.
Random weights; the artifact is made or reused as `benchmarks/serving.py` makes it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pe_export.embed import EmbedOptions, embed
from pe_export.embed.job import default_batch
from pe_export.manifests import read_manifest
from pe_export.model.inputs import model_input
from pe_export.runners import open_runner
from pe_export.variants import get_variant
from measured import made_artifact, tree_rss  # beside this script

LOCAL_OVER_CEILING, RAY_OVER_LOCAL = 0.9, 0.8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="PE-Core-B16-224")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--profile", help="profile name or YAML (default as in benchmarks/serving.py)")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    args = parser.parse_args()

    variant = get_variant(args.variant)
    artifact = made_artifact(variant.name, args.precision, args.profile)
    batch = default_batch(read_manifest(artifact))
    with tempfile.TemporaryDirectory(prefix="pe-export-embed-bench-") as scratch:
        folder = _images(Path(scratch) / "images", args.images)
        ceiling = _ceiling(artifact, folder, variant.name, batch)
        runs = {engine: _measured(lambda advance, engine=engine: embed(
            str(folder), artifact, Path(scratch) / engine, EmbedOptions(shard_size=args.shard_size, engine=engine),
            advance=advance), args.images) for engine in ("local", "ray")}
        local, ray = runs["local"], runs["ray"]
    result = {"variant": variant.name, "artifact": artifact.name, "images": args.images, "batch": batch,
              "cpu": _cpu(), "ceiling_ips": round(ceiling, 3), "local": local, "ray": ray,
              "local_over_ceiling": round(local["ips"] / ceiling, 3), "ray_over_local": round(ray["ips"] / local["ips"], 3),
              # without the start-up (opening the runner, Ray's start): the rates after the first shard
              "steady_local_over_ceiling": _ratio(local["ips_after_first_shard"], ceiling),
              "steady_ray_over_local": _ratio(ray["ips_after_first_shard"], local["ips_after_first_shard"])}
    result["passed"] = result["local_over_ceiling"] >= LOCAL_OVER_CEILING and result["ray_over_local"] >= RAY_OVER_LOCAL
    _print(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"embed_{variant.name}_{args.precision}.json").write_text(json.dumps(result, indent=2) + "\n")


def _images(folder: Path, count: int) -> Path:
    """`count` photo-sized JPEGs (640 x 480, smooth gradients plus noise, as cameras' files decode)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 640, dtype=np.float32)[None, :, None]
    for i in range(count):
        pixels = ramp + rng.normal(0, 25, (480, 640, 3)).astype(np.float32) + 20 * (i % 3)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def _ceiling(artifact: Path, folder: Path, variant: str, batch: int) -> float:
    """Images per second of the runner alone, on inputs decoded and preprocessed beforehand."""
    inputs = np.concatenate([model_input(p, variant).pixel_values for p in sorted(folder.glob("*.jpg"))])
    with open_runner(artifact) as runner:
        runner.run(inputs[:batch])  # warm-up, as embed's first batch is not timed apart either
        start = time.perf_counter()
        for first in range(0, len(inputs), batch):
            runner.run(inputs[first:first + batch])
        return len(inputs) / (time.perf_counter() - start)


def _measured(call, images: int) -> dict:
    """Wall time, images per second (overall, and after the first shard: without the start-up) and the
    process tree's peak RSS of one embed call."""
    peak, done, first = [tree_rss(os.getpid())], threading.Event(), []

    def sample() -> None:
        while not done.wait(0.1):
            peak[0] = max(peak[0], tree_rss(os.getpid()))

    def advance(count: int, total: int) -> None:
        if count and not first:
            first.append((time.perf_counter(), count))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    result = call(advance)
    end = time.perf_counter()
    done.set()
    sampler.join()
    assert result.manifest["counts"]["embedded"] == images
    (at, count) = first[0]
    return {"seconds": round(end - start, 2), "ips": round(images / (end - start), 3),
            "ips_after_first_shard": round((images - count) / (end - at), 3) if images > count else None,
            "peak_tree_rss_mib": round(peak[0] / 2**20)}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _cpu() -> str:
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "unknown CPU")


def _print(r: dict) -> None:
    print(f"\n{r['variant']} {r['artifact']}, {r['images']} JPEGs 640x480, batch {r['batch']}, {r['cpu']}\n")
    print("| path | img/s | img/s after the first shard | seconds | peak tree RSS MiB |\n|---|---|---|---|---|")
    print(f"| runner in a loop, pre-decoded (ceiling) | {r['ceiling_ips']:.2f} | | | |")
    for name in ("local", "ray"):
        row = r[name]
        print(f"| embed --engine {name} | {row['ips']:.2f} | {row['ips_after_first_shard']} | {row['seconds']:.1f} | "
              f"{row['peak_tree_rss_mib']} |")
    print(f"\nlocal / ceiling {r['local_over_ceiling']:.2f} (target >= {LOCAL_OVER_CEILING}), ray / local "
          f"{r['ray_over_local']:.2f} (target >= {RAY_OVER_LOCAL}): {'PASS' if r['passed'] else 'MISS'}; after the "
          f"first shard: local / ceiling {r['steady_local_over_ceiling']}, ray / local {r['steady_ray_over_local']}")


if __name__ == "__main__":
    main()
