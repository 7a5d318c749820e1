"""A fully reused `pe-export openvino` chain: the command's wall time against the one hash of each file
it cannot avoid.

The chain is made first if it is not there (`pe-export openvino -v VARIANT --random-init --precision
int8`: fp32 ONNX, int8 Q/DQ ONNX, int8 IR). Then, in rounds, the same command runs again in a fresh
process (it must say "reused" and start no worker), and this process hashes every file of the chain
once with the command's own digests, and imports what the command imports. With the page cache
warm for both, the command's time should be the hashing plus its start-up, nothing more.

    python benchmarks/reused_chain.py --variant L14 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pe_export.artifacts import Digests  # noqa: E402
from pe_export.manifests import read_manifest  # noqa: E402
from pe_export.runners.device import cpu_name  # noqa: E402

CLI = [sys.executable, "-m", "pe_export.cli"]
STARTUP = [sys.executable, "-c", "import pe_export.cli.build, pe_export.pipeline.commands"]


def _chain(ir: Path) -> list[Path]:
    """Every file the reused command hashes: the IR's, its int8 ONNX's and that ONNX's fp32 export's."""
    files, artifact = [], ir
    while artifact is not None:
        manifest = read_manifest(artifact)
        files += [artifact.parent / name for name in manifest.files]
        source = getattr(manifest, "source_onnx", None)
        artifact = Path(source.path) if source else None
    return files


def _hash_seconds(files: list[Path]) -> float:
    """Each file hashed once, by the digests the command itself uses (a fresh cache, so nothing is skipped)."""
    digests = Digests()
    start = time.perf_counter()
    for path in files:
        digests.sha256(path)
    return time.perf_counter() - start


def _timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    wide = {**os.environ, "COLUMNS": "400"}  # one line per message, so the reused path reads whole
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=wide)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="L14")
    parser.add_argument("--profile", help="default: the variant's CPU profile (the onnxruntime export)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    args = parser.parse_args()

    command = [*CLI, "openvino", "-v", args.variant, "--random-init", "--precision", "int8",
               *(["--profile", args.profile] if args.profile else [])]
    made, _ = _timed(command)  # makes what is missing, else already a reused run
    print(f"chain ready in {made:.1f} s", flush=True)
    rows = []
    for _ in range(args.rounds):  # interleaved, so every figure sees the same machine load
        wall, out = _timed(command)
        if "reused" not in out:
            sys.exit(f"the second run did not reuse the IR:\n{out}")
        ir = Path(next(line for line in out.splitlines() if line.startswith("reused ")).split()[1])  # the result line
        files = _chain(ir)
        rows.append({"wall_s": wall, "hash_s": _hash_seconds(files), "startup_s": _timed(STARTUP)[0]})
    median = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    size = sum(p.stat().st_size for p in files)
    result = {
        "variant": args.variant, "cpu": cpu_name(), "files": len(files), "bytes": size, "rounds": args.rounds,
        **{k: round(v, 2) for k, v in median.items()},
        "hash_share_of_wall": round(median["hash_s"] / median["wall_s"], 2),
        "rest_s": round(median["wall_s"] - median["hash_s"] - median["startup_s"], 2),
    }
    print(f"reused {args.variant} int8 IR chain on {result['cpu']}: {len(files)} files, {size / 2**30:.2f} GiB")
    print(f"  command wall {median['wall_s']:.2f} s = hashing {median['hash_s']:.2f} s "
          f"({100 * result['hash_share_of_wall']:.0f}%) + start-up {median['startup_s']:.2f} s + rest {result['rest_s']:.2f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"reused_chain_{args.variant}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
