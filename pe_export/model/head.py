"""Which output of the tower an artifact carries: tokens (of any block, with or without the class
token), the pooled, projected embedding of Core variants, or PLM's projected image features."""

from __future__ import annotations

import torch

from pe_export.model.pe import PEVisionTower
from pe_export.variants import OutputKind, check_output


class OutputHead(torch.nn.Module):
    """The chosen output of a PE tower as a one-input, one-output module."""

    def __init__(self, model: PEVisionTower, output: OutputKind = "tokens", layer: int = -1, strip_cls: bool = False):
        super().__init__()
        check_output(model.variant, output, layer, strip_cls)
        self.model = model
        self.output = output
        self.layer = layer
        # ln_post belongs to the last block's output only
        self.norm = layer % model.variant.layers == model.variant.layers - 1
        self.strip_cls = strip_cls
        self.key = (output, layer, strip_cls)  # heads with the same key compute the same output

    @classmethod
    def for_options(cls, model: PEVisionTower, options: dict) -> "OutputHead":
        """The head an artifact's manifest options describe (the variant's default output where unset)."""
        return cls(model, options.get("output", model.variant.default_output), options.get("layer", -1),
                   options.get("strip_cls", False))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.output == "pooled":
            return self.model.forward_pooled(pixel_values)
        if self.output == "image_features":
            return self.model.forward_image_features(pixel_values)
        return self.model.forward_features(
            pixel_values, norm=self.norm, layer_idx=self.layer, strip_cls_token=self.strip_cls
        )
