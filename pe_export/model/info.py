"""What `pe-export info` reports: a variant's configuration and the weights it was given."""

from __future__ import annotations

from dataclasses import dataclass

from pe_export.model.factory import load_source
from pe_export.source import ModelSource, WeightSource
from pe_export.variants import Variant


@dataclass(frozen=True)
class ModelInfo:
    variant: Variant
    parameters: int
    tensors: int
    source: WeightSource

    def rows(self) -> list[tuple[str, str]]:
        v = self.variant
        rows = [
            ("variant", v.name + (f" ({v.alias})" if v.alias else "")),
            ("family", v.family),
            ("input", f"B x 3 x {v.image_size} x {v.image_size}"),
            ("patch / grid", f"{v.patch_size} / {v.grid} x {v.grid}"),
            ("tokens", f"{v.tokens} ({'with' if v.cls_token else 'no'} class token)"),
            ("width / layers / heads", f"{v.width} / {v.layers} / {v.heads} (head dim {v.head_dim})"),
            ("mlp width", str(v.mlp_width)),
            ("layer scale", str(v.layer_scale) if v.layer_scale else "-"),
            ("ln_post / pooler / proj", f"{v.ln_post} / {'attn' if v.attn_pool else 'none'} / {v.proj_dim or '-'}"),
            *([("projector", f"{v.width} -> {v.projector_dim} (PLM's D), {v.output_tokens} tokens per tile")]
              if v.projector_dim else []),
            ("default output", v.default_output),
            ("parameters", f"{self.parameters:,}"),
            ("GMACs / image", f"{v.gmacs:.1f}"),
            ("weights", self.source.describe()),
        ]
        if self.source.sha256:
            rows.append(("weights sha256", self.source.sha256))
            rows.append(("key check", f"all {self.tensors} tensors match (strict)"))
        return rows


def describe(source: ModelSource) -> ModelInfo:
    """Load the source's weights (strictly checked) and summarise model and source."""
    loaded = load_source(source)
    params = sum(p.numel() for p in loaded.model.parameters())
    tensors = len(loaded.model.state_dict())
    return ModelInfo(loaded.variant, params, tensors, loaded.source)
