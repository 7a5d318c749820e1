"""INT8 against real activation statistics: plain per-tensor against outlier-aware INT8 (smoothing,
automatic fallback) and FP8 on stress variants of a checkpoint, onnxruntime CPU latency of INT8
against the fp32 ONNX, the latency each site kept in high precision costs, and the wall time and
peak memory of `quantize` and `sensitivity`.

    python benchmarks/int8_robustness.py --variant PE-Spatial-T16-512 \\
        --checkpoint ../shared/fixtures/PE-Spatial-T16-512_s0.pt --stress outlier-channels,skewed-gelu
    python benchmarks/int8_robustness.py --variant L14 --samples 32 --sensitivity   # random weights

Every quantize and sensitivity run is `pe-export` in a fresh process: its wall time, its tree's
largest resident set from os.wait4 (what `/usr/bin/time -v` prints) and, from the manifest, each
process's own high-water mark. A run that misses its threshold (exit 1) is a result: its figures
come from the manifest in the `.rejected` folder. Latency is measured round-robin in this process
at one thread count, so the ratios to the fp32 ONNX hold on a noisy machine; the variants with k
sites kept in high precision come from one calibration (the k largest GEMMs of the ranking by
sensitivity when --sensitivity ran, else the c_proj of the first k blocks).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import onnx
import torch
import yaml

from measured import run_measured  # beside this script
from pe_export.bench.latency import wall_ms
from pe_export.model import load_model
from pe_export.model.stress import save_stressed
from pe_export.onnx.export import INPUT_NAME
from pe_export.pipeline import Plan
from pe_export.precision import convert
from pe_export.precision.calibration import load_calibration
from pe_export.precision.profiles import cpu_profile, load_profile
from pe_export.precision.sensitivity import site_macs
from pe_export.report import summarize
from pe_export.runners.onnxruntime import OrtRunner
from pe_export.validate import synthetic_inputs
from pe_export.variants import get_variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="PE-Spatial-T16-512")
    parser.add_argument("--checkpoint", type=Path, help="weights to stress (default: seeded random weights)")
    parser.add_argument("--stress", default="", help="comma list of pe_export.model.stress edits")
    parser.add_argument("--samples", type=int, default=8, help="calibration images (synthetic)")
    parser.add_argument("--batch-size", type=int, default=2, help="calibration images per batch")
    parser.add_argument("--threshold", type=float, default=0.995, help="token cosine mean gate")
    parser.add_argument("--alphas", default="0.5", help="smoothing strengths to compare, e.g. 0.3,0.5,0.7,0.85")
    parser.add_argument("--kept", default="1,2,4", help="counts of sites kept in high precision to time")
    parser.add_argument("--sensitivity", action="store_true", help="also time `pe-export sensitivity`")
    parser.add_argument("--latency-only", action="store_true",
                        help="time the artifacts of an earlier run in --out again, without making them")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    args = parser.parse_args()
    variant = get_variant(args.variant)
    folder = args.out / f"int8-robustness-{variant.name}{'-' + args.stress.replace(',', '+') if args.stress else ''}"
    folder.mkdir(parents=True, exist_ok=True)
    weights = _weights(variant.name, args.checkpoint, [k for k in args.stress.split(",") if k], folder)
    source = ["-v", variant.name, *(["-c", str(weights)] if weights else ["--random-init"]), "--calib", "synthetic"]
    alphas = [float(a) for a in args.alphas.split(",")]

    runs = [("int8", "plain per-tensor", {"smoothing": None}, [])]
    runs += [("int8", f"smoothing a={a}", {"smoothing": a}, []) for a in alphas]
    runs += [("int8", f"smoothing a={alphas[0]} + --auto-exclude", {"smoothing": alphas[0]}, ["--auto-exclude"]),
             ("fp8", "plain per-tensor", {"smoothing": None}, []), ("fp8", f"smoothing a={alphas[0]}", {"smoothing": alphas[0]}, [])]
    rows = []
    for precision, label, section, flags in [] if args.latency_only else runs:
        profile = _profile(folder, variant.name, args, precision, section)
        target = folder / f"{profile.stem}.{precision}{'.auto' if flags else ''}.onnx"
        cost = run_measured(["quantize", *source, "--precision", precision, "--profile", str(profile),
                             "-o", str(target), *flags])
        rows.append(_quantize_row(precision, label, target, cost))
        print(_line(rows[-1]), flush=True)

    ranking = None
    if args.sensitivity:
        report = folder / "sensitivity.json"
        cost = run_measured(["sensitivity", *source, "--precision", "int8", "--json", str(report), "--threads",
                             str(args.threads), "--profile", str(_profile(folder, variant.name, args, "int8",
                                                                           {"smoothing": alphas[0]}))])
        data = json.loads(report.read_text()) if cost["code"] == 0 else {}
        ranking = [s["site"] for s in data.get("sites", [])]
        sensitivity = {**cost, "sites": len(ranking), "peak_rss_mb": data.get("peak_rss_mb"),
                       "baselines": data.get("baselines"), "top": data.get("sites", [])[:5]}
        print(f"sensitivity: {json.dumps(sensitivity)}", flush=True)
    else:
        sensitivity = None

    latency = _latency(variant.name, weights, args, alphas[0], ranking, folder)
    summary = folder / "int8_robustness.json"
    earlier = json.loads(summary.read_text()) if args.latency_only and summary.exists() else {}
    result = {"variant": variant.name, "stress": args.stress, "samples": args.samples, "threshold": args.threshold,
              "quantize": rows or earlier.get("quantize", []), "sensitivity": sensitivity or earlier.get("sensitivity"),
              "latency": latency}
    summary.write_text(json.dumps(result, indent=2))
    _print_tables(result)


def _weights(variant: str, checkpoint: Path | None, stress: list[str], folder: Path) -> Path | None:
    """The checkpoint to run on: the given or seeded random weights, with the stress edits applied."""
    if not stress:
        return checkpoint
    if checkpoint is None:
        checkpoint = folder / "random-init.pt"
        torch.save(load_model(variant, random_init=True).model.state_dict(), checkpoint)
    return save_stressed(checkpoint, variant, stress, folder / f"{variant}-{'+'.join(stress)}.pt")


def _profile(folder: Path, variant: str, args, precision: str, section: dict) -> Path:
    smoothing = section["smoothing"]
    path = folder / f"{precision}-{'plain' if smoothing is None else f'a{smoothing}'}.yaml"
    path.write_text(yaml.safe_dump({
        "name": path.stem, "variant": variant, "export": {"target": "ort"},
        "calibration": {"source": "synthetic", "samples": args.samples, "batch_size": args.batch_size},
        "quantization": {precision: {"exclude": ["^conv1/"], **section}},
        "parity": {precision: args.threshold}}))
    return path


def _quantize_row(precision: str, label: str, target: Path, cost: dict) -> dict:
    made = target.with_name(target.name + ".json")
    rejected = target.parent / f"{target.name}.rejected" / made.name
    manifest = json.loads((made if cost["code"] == 0 else rejected).read_text()) if cost["code"] in (0, 1) else {}
    parity, fallback = manifest.get("parity", {}), manifest.get("auto_exclude") or {}
    return {"precision": precision, "config": label, "cosine_mean": parity.get("cosine_mean"),
            "cosine_min": parity.get("cosine_min"), "max_abs": parity.get("max_abs"), "passed": cost["code"] == 0,
            "seconds": cost["seconds"], "max_rss_gib": cost["max_rss_gib"], "peak_rss_mb": manifest.get("peak_rss_mb"),
            "kept_in_high_precision": len(fallback.get("excluded", [])), "fallback_seconds": fallback.get("seconds"),
            "excluded_work_share": fallback.get("excluded_work_share"), "error": cost["error"]}


def _latency(variant: str, weights: Path | None, args, alpha: float, ranking: list[str] | None, folder: Path) -> list[dict]:
    """fp32 ONNX, the plain and the smoothed INT8 `quantize` made, and INT8 (smoothed) with k sites kept
    in high precision, timed round-robin."""
    loaded = load_model(variant, weights, random_init=weights is None)
    profile = load_profile(_profile(folder, variant, args, "int8", {"smoothing": alpha}))
    fp32 = Plan.of(loaded, cpu_profile(loaded.variant.name), root=folder / "latency").fp32().path
    calibration = load_calibration("synthetic", args.samples, loaded.variant.image_size)
    external = fp32.with_name(fp32.name + ".data").exists()
    with tempfile.TemporaryDirectory(dir=folder) as work:
        calibrated = convert.calibrate(fp32, "int8", profile.quantization.int8, calibration.batch, profile.calibration,
                                       INPUT_NAME, Path(work))
    sites = list(dict.fromkeys(s.node for s in calibrated.sites))
    gemm_macs = _macs(fp32, sites)
    order = ranking or [n for i in range(loaded.variant.layers) for n in sites if n.startswith(f"transformer.resblocks.{i}.mlp.c_proj")]
    paths = {"fp32": (fp32, [])}
    for config, made in (("plain per-tensor", "int8-plain"), (f"smoothing a={alpha}", f"int8-a{alpha}")):
        if (folder / f"{made}.int8.onnx").exists():  # what `quantize` made above: smoothing adds no op
            paths[f"int8 {config} (quantize)"] = (folder / f"{made}.int8.onnx", [])
    for count in [0, *(int(k) for k in args.kept.split(","))]:
        kept = order[:count]
        path = folder / f"latency.int8.kept{count}.onnx"
        convert.save_model(convert.quantized_model(calibrated, frozenset(kept)), path, external)
        paths[f"int8, {count} kept"] = (path, kept)
    del loaded
    runners = {name: OrtRunner(path, threads=args.threads) for name, (path, _) in paths.items()}
    x = synthetic_inputs(get_variant(variant), 1).batch
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for runner in runners.values():
        runner.run(x)
    for _ in range(args.iters):
        for name, runner in runners.items():
            samples[name].append(wall_ms(lambda r=runner: r.run(x)))
    p50 = {name: summarize(s).p50 for name, s in samples.items()}
    rows = []
    for name, (path, kept) in paths.items():
        extra = p50[name] - p50["int8, 0 kept"] if kept else None
        rows.append({"artifact": name, "p50_ms": round(p50[name], 1), "vs_fp32": round(p50[name] / p50["fp32"], 3),
                     "kept_gmacs": round(sum(gemm_macs.get(n, 0) for n in kept) / 1e9, 3),
                     "ms_per_kept_site": round(extra / len(kept), 2) if kept else None})
    return rows


def _macs(path: Path, sites: list[str]) -> dict[str, int]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return {n.name: site_macs(graph, n) for n in graph.node if n.name in sites}


def _line(row: dict) -> str:
    cos = "-" if row["cosine_mean"] is None else f"{row['cosine_mean']:.5f}"
    return f"{row['precision']} {row['config']}: token cosine mean {cos}, {row['seconds']} s, max RSS {row['max_rss_gib']} GiB"


def _print_tables(result: dict) -> None:
    f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    print(f"\n{result['variant']} (stress: {result['stress'] or 'none'}), {result['samples']} synthetic calibration "
          f"images, threshold {result['threshold']}\n")
    print("| precision | configuration | token cosine mean | min | max abs | passes | kept in fp32 | make s | max RSS GiB (tree) | main / worker MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in result["quantize"]:
        rss = r["peak_rss_mb"] or {}
        print(f"| {r['precision']} | {r['config']} | {f(r['cosine_mean'], '.5f')} | {f(r['cosine_min'], '.5f')} | "
              f"{f(r['max_abs'], '.3g')} | {'yes' if r['passed'] else 'no'} | {r['kept_in_high_precision']} | "
              f"{r['seconds']} | {r['max_rss_gib']} | {rss.get('main', '-')} / {rss.get('calibration worker', '-')} |")
    print("\n| artifact | p50 ms | vs fp32 ONNX | GMACs kept in fp32 | ms per kept site |")
    print("|---|---|---|---|---|")
    for r in result["latency"]:
        print(f"| {r['artifact']} | {r['p50_ms']} | {r['vs_fp32']:.3f} | {r['kept_gmacs']} | {f(r['ms_per_kept_site'], '.2f')} |")
    if result["sensitivity"]:
        s = result["sensitivity"]
        print(f"\nsensitivity: {s['sites']} sites in {s['seconds']} s, max RSS {s['max_rss_gib']} GiB (tree), "
              f"per process {s['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
