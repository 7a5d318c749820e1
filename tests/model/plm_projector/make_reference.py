"""Reference outputs of Meta's PerceptionLM projector (`MLPProjector` in facebookresearch/perception_models
`core/vision_projector/mlp.py`, pooling_ratio 2, as PLM's stage-2/3 configs set it), fp32, eval.

    python tests/model/plm_projector/make_reference.py /path/to/perception_models /path/to/shared/fixtures

Weights come from `projector_weights` below (seeded, so the tests make the same ones). Cases:
- `t16`: the tokens Meta's PE-Spatial-T16-512 fixture gives with norm=True, strip_cls_token=True
  (`features_norm_strip` in PE-Spatial-T16-512_s0.npz) through a W 192 -> D 64 projector: the whole
  output (1, 256, 64);
- `d2048`, `d3072`: seeded tokens (1, 1024, 1024), as PE-Lang-L14-448 gives them, through the PLM-1B
  and PLM-3B projectors: each output token's float64 sum and a strided sample.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SAMPLE = (slice(None), slice(3, None, 7), slice(5, None, 13))
CASES = {"t16": (192, 64, 0), "d2048": (1024, 2048, 1), "d3072": (1024, 3072, 2)}  # width, dim, seed


def projector_weights(width: int, dim: int, seed: int) -> dict[str, torch.Tensor]:
    """Seeded projector weights under PLM's checkpoint names, fan-in scaled, biases non-zero."""
    gen = torch.Generator().manual_seed(1000 + seed)
    return {"vision_projector.projector.0.weight": torch.randn(dim, width, generator=gen) * width**-0.5,
            "vision_projector.projector.0.bias": torch.randn(dim, generator=gen) * 0.1,
            "vision_projector.projector.2.weight": torch.randn(dim, dim, generator=gen) * dim**-0.5,
            "vision_projector.projector.2.bias": torch.randn(dim, generator=gen) * 0.1}


def tokens(seed: int, width: int = 1024) -> torch.Tensor:
    """Seeded tower tokens, (1, 1024, width)."""
    return torch.randn(1, 1024, width, generator=torch.Generator().manual_seed(2000 + seed))


def _meta_projector(repo: Path, width: int, dim: int):
    core, utils, projectors = (types.ModuleType(n) for n in ("core", "core.utils", "core.vision_projector"))
    utils.get_init_fn = lambda *args, **kwargs: None  # only initialisation uses it; the weights are loaded
    core.utils, core.vision_projector = utils, projectors
    sys.modules.update({"core": core, "core.utils": utils, "core.vision_projector": projectors})
    for name in ("base", "mlp"):
        module = types.ModuleType(f"core.vision_projector.{name}")
        sys.modules[module.__name__] = module
        setattr(projectors, name, module)
        source = repo / "core" / "vision_projector" / f"{name}.py"
        exec(compile(source.read_text(), str(source), "exec"), module.__dict__)
    args = types.SimpleNamespace(vision_model={"width": width}, dim=dim, pooling_ratio=2, remove_vision_class_token=True,
                                 mlp_init=None)
    return sys.modules["core.vision_projector.mlp"].MLPProjector(args).eval()


def main() -> None:
    repo, fixtures = Path(sys.argv[1]), Path(sys.argv[2])
    arrays = {}
    for name, (width, dim, seed) in CASES.items():
        projector = _meta_projector(repo, width, dim)
        projector.load_state_dict({k.removeprefix("vision_projector."): v for k, v in projector_weights(width, dim, seed).items()})
        x = (torch.from_numpy(np.load(fixtures / "PE-Spatial-T16-512_s0.npz")["features_norm_strip"]) if name == "t16"
             else tokens(seed, width))
        with torch.no_grad():
            out = projector(x)
        if name == "t16":
            arrays["t16/output"] = out.numpy()
        else:
            arrays[f"{name}/sums"] = out.double().sum(-1).numpy()
            arrays[f"{name}/sample"] = out[SAMPLE].numpy()
    np.savez_compressed(HERE / "reference.npz", **arrays)


if __name__ == "__main__":
    main()
