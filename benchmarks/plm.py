"""PerceptionLM's vision model at full size on this CPU, in one run:

1. parity: a PLM-1B-shaped Meta checkpoint (seeded random tower and projector, plus LLM keys that must
   be skipped) exported with `pe-export onnx`, on onnxruntime CPU, against Meta's own code (its
   `VisionTransformer.forward_features(norm=True, strip_cls_token=True)` then `MLPProjector`, fp32,
   eval) for N = 1, 3 and 13 tiles (target: token cosine >= 0.99999); the Hugging Face form of the
   same weights has the same weights digest (so the same artifact identity);
2. the projector's share of the per-tile latency (torch fp32 and bf16 autocast, batch 1), and the
   pooled-before-the-second-Linear form against Meta's Linear-then-pool form (latency and cosine),
   for PLM-1B's and PLM-3B's projector widths;
3. int8 of PLM-3B (random weights, synthetic calibration) through `pe-export quantize` with the shipped
   `pe-plm-3b-datacenter` profile: its parity gate on onnxruntime.

Needs Meta's repository (fetch facebookresearch/perception_models) and einops, which its code imports
(timm's DropPath, a no-op in eval, is stood in for):

    pip install einops
    python benchmarks/plm.py --meta /path/to/perception_models [--skip-int8]

Prints one JSON document; figures, with the CPU, go to docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

from pe_export.model import load_model
from pe_export.model.checkpoint import read_checkpoint, weights_digest
from pe_export.model.factory import build_model, random_init_
from pe_export.model.pe import Projector
from pe_export.runners.device import cpu_name
from pe_export.validate import compare

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "model" / "plm_projector"))
from make_reference import _meta_projector, projector_weights  # noqa: E402  (the seeded weights the tests use)

TILES = (1, 3, 13)


def _meta_tower(repo: Path, state: dict):
    timm = types.ModuleType("timm")
    timm.layers = types.ModuleType("timm.layers")
    timm.layers.DropPath = lambda *args, **kwargs: torch.nn.Identity()
    sys.modules.update({"timm": timm, "timm.layers": timm.layers})
    sys.path.insert(0, str(repo))
    from core.vision_encoder.pe import VisionTransformer

    tower = VisionTransformer.from_config("PE-Lang-L14-448")
    tower.load_state_dict(state, strict=True)
    return tower.eval()


def _tiles(count: int) -> torch.Tensor:
    return torch.rand(count, 3, 448, 448, generator=torch.Generator().manual_seed(count)) * 2 - 1


def parity(repo: Path, folder: Path) -> dict:
    from pe_export.onnx.export import ExportOptions, export_variant
    from pe_export.runners import open_runner
    from pe_export.source import ModelSource

    state = random_init_(build_model("PE-Lang-L14-448"), seed=0).state_dict()
    projector = projector_weights(1024, 2048, 1)
    checkpoint = folder / "consolidated.pth"
    torch.save({**{f"vision_model.{k}": v for k, v in state.items()}, **projector,
                "tok_embeddings.weight": torch.zeros(16, 8), "layers.0.attention.wq.weight": torch.zeros(8, 8)}, checkpoint)
    tower, meta_projector = _meta_tower(repo, state), _meta_projector(repo, 1024, 2048)
    meta_projector.load_state_dict({k.removeprefix("vision_projector."): v for k, v in projector.items()})
    start = time.perf_counter()
    result = export_variant(ModelSource("PLM-1B", checkpoint), options=ExportOptions(target="ort"), output=folder / "plm-1b.onnx")
    export_s = time.perf_counter() - start
    rows = []
    with open_runner(result.path, threads=torch.get_num_threads()) as runner:
        for count in TILES:
            x = _tiles(count)
            with torch.no_grad():
                expected = meta_projector(tower.forward_features(x, norm=True, strip_cls_token=True)).numpy()
            got = runner.run(x.numpy())
            stats = compare(expected, got)
            rows.append({"tiles": count, "shape": list(got.shape), "cosine_min": stats.cosine_min,
                         "cosine_mean": stats.cosine_mean, "max_abs": stats.max_abs, "passed": stats.cosine_min >= 0.99999})
    hf = folder / "model.safetensors"
    _save_hf(read_checkpoint(checkpoint), hf)
    same = weights_digest(read_checkpoint(hf))[0] == result.manifest.weights.sha256
    return {"export_s": round(export_s, 1), "rows": rows, "hf_form_same_weights_digest": same,
            "handoff": result.manifest.handoff.model_dump(mode="json")}


def _save_hf(state: dict, path: Path) -> None:
    """The tower and projector in Hugging Face's PerceptionLM names (the loader's inverse, from the tests)."""
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT / "tests" / "model"))
    from test_checkpoint import to_timm

    tower = {f"model.vision_tower.timm_model.{k}": v.contiguous()
             for k, v in to_timm({k: v for k, v in state.items() if not k.startswith("vision_projector.")}).items()}
    projector = {k.replace("vision_projector.projector.0.", "model.multi_modal_projector.linear_1.")
                 .replace("vision_projector.projector.2.", "model.multi_modal_projector.linear_2."): v
                 for k, v in state.items() if k.startswith("vision_projector.")}
    save_file({**tower, **projector, "lm_head.weight": torch.zeros(16, 8)}, path)


def _median_ms(run, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def projector_share(rounds: int) -> dict:
    """Per tile (batch 1): the tower and each projector form, interleaved, fp32 and bf16 autocast."""
    tower = load_model("PE-Lang-L14-448", random_init=True).model
    x = _tiles(1)
    out = {}
    with torch.no_grad():
        tokens = tower.forward_features(x, norm=True, strip_cls_token=True)
        for dim, seed in ((2048, 1), (3072, 2)):
            forms = {}
            for pool_first in (True, False):
                projector = Projector(1024, dim, pool_first).eval()
                projector.load_state_dict({k.removeprefix("vision_projector."): v
                                           for k, v in projector_weights(1024, dim, seed).items()})
                forms["pooled_first" if pool_first else "meta"] = projector
            for dtype in ("fp32", "bf16"):
                with torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bf16"):
                    times = {name: [] for name in ("tower", *forms)}
                    for _ in range(rounds):  # interleaved, so drift hits every row alike
                        times["tower"].append(_median_ms(lambda: tower.forward_features(x, norm=True, strip_cls_token=True), 1))
                        for name, projector in forms.items():
                            times[name].append(_median_ms(lambda p=projector: p(tokens), 3))
                    ms = {name: float(np.median(t)) for name, t in times.items()}
                    outputs = {name: p(tokens).float().numpy() for name, p in forms.items()}
                agreement = compare(outputs["meta"], outputs["pooled_first"])
                out[f"D{dim}/{dtype}"] = {
                    "tower_ms": round(ms["tower"], 1), "projector_ms": round(ms["pooled_first"], 2),
                    "meta_projector_ms": round(ms["meta"], 2),
                    "projector_share": round(ms["pooled_first"] / (ms["tower"] + ms["pooled_first"]), 4),
                    "pooled_first_vs_meta_latency": round(ms["pooled_first"] / ms["meta"], 3),
                    "pooled_first_vs_meta_cosine_min": agreement.cosine_min, "max_abs": agreement.max_abs}
    return out


def int8_plm3b(folder: Path) -> dict:
    from pe_export.pipeline.commands import quantize_variant
    from pe_export.source import ModelSource

    start = time.perf_counter()
    made = quantize_variant(ModelSource("PLM-3B", random_init=True), "int8", profile="pe-plm-3b-datacenter",
                            calib="synthetic", output=folder / "plm-3b.int8.onnx")
    row = made.parity
    return {"seconds": round(time.perf_counter() - start, 1), "cosine_mean": row.cosine_mean,
            "cosine_min": row.cosine_min, "threshold": row.threshold, "passed": row.passed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta", type=Path, required=True, help="a checkout of facebookresearch/perception_models")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-int8", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    report = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(dir=ROOT / "artifacts" if (ROOT / "artifacts").is_dir() else None) as scratch:
        report["parity"] = parity(args.meta, Path(scratch))
        report["projector"] = projector_share(args.rounds)
        if not args.skip_int8:
            report["int8_plm3b"] = int8_plm3b(Path(scratch))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
