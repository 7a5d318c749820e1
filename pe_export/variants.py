"""The registry of PE vision variants, exactly as PE_SPEC.md states them."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from typing import Literal

from pe_export.errors import UsageError

Family = Literal["Core", "Lang", "Spatial", "PLM"]
OutputKind = Literal["tokens", "pooled", "image_features"]

POOLER_HEADS = 8
POOLER_MLP_RATIO = 4


@dataclass(frozen=True)
class Variant:
    """One PE vision tower configuration."""

    name: str
    family: Family
    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    mlp_width: int
    layer_scale: float | None
    cls_token: bool
    ln_post: bool
    attn_pool: bool
    proj_dim: int | None
    timm_name: str
    alias: str | None = None
    projector_dim: int | None = None  # PLM: the tower feeds a projector to this LLM width

    @property
    def output_tokens(self) -> int:
        """Tokens per image of the default output: PLM's projector averages 2x2 patches."""
        return (self.grid // 2) ** 2 if self.projector_dim else self.tokens

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def patches(self) -> int:
        return self.grid * self.grid

    @property
    def tokens(self) -> int:
        return self.patches + int(self.cls_token)

    @property
    def default_output(self) -> OutputKind:
        return "image_features" if self.projector_dim else "pooled" if self.attn_pool else "tokens"

    @property
    def hub_repo(self) -> str:
        return f"facebook/Perception-LM-{self.name.removeprefix('PLM-')}" if self.family == "PLM" else f"facebook/{self.name}"

    @property
    def hub_filename(self) -> str:
        # PLM's hub repos hold Hugging Face's format (the tower and projector are read from it, not the LLM)
        return "model.safetensors" if self.family == "PLM" else f"{self.name}.pt"

    @property
    def parameters(self) -> int:
        """Exact parameter count, derived from the architecture."""
        w, m = self.width, self.mlp_width
        block = 4 * w + (3 * w * w + 3 * w) + (w * w + w) + (m * w + m) + (w * m + w)
        if self.layer_scale is not None:
            block += 2 * w
        total = 3 * self.patch_size**2 * w + self.tokens * w + 2 * w + self.layers * block
        total += w * int(self.cls_token)
        if self.ln_post:
            total += 2 * w
        if self.attn_pool:
            pm = POOLER_MLP_RATIO * w
            total += w + (3 * w * w + 3 * w) + (w * w + w) + 2 * w + (pm * w + pm) + (w * pm + w)
        if self.proj_dim:
            total += w * self.proj_dim
        if self.projector_dim:
            d = self.projector_dim
            total += (w * d + d) + (d * d + d)
        return total

    @property
    def macs(self) -> int:
        """Multiply-accumulates per image: patch embedding, blocks, pooler and projection."""
        w, n = self.width, self.tokens
        total = self.patches * 3 * self.patch_size**2 * w
        total += self.layers * (4 * n * w * w + 2 * n * self.mlp_width * w + 2 * n * n * w)
        if self.attn_pool:
            pm = POOLER_MLP_RATIO * w
            total += w * w + 2 * n * w * w + 2 * n * w + w * w + 2 * pm * w
        if self.proj_dim:
            total += w * self.proj_dim
        if self.projector_dim:  # both Linears on every patch token, as Meta's projector computes them
            total += self.patches * (w + self.projector_dim) * self.projector_dim
        return total

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def _core(name, img, patch, width, layers, heads, mlp, proj, timm, cls=True) -> Variant:
    return Variant(name, "Core", img, patch, width, layers, heads, mlp, None, cls, True, True, proj, timm)


def _tokens(family, name, img, patch, width, layers, heads, mlp, ls, timm, cls=True, alias=None):
    return Variant(name, family, img, patch, width, layers, heads, mlp, ls, cls, False, False, None, timm, alias)


VARIANTS: tuple[Variant, ...] = (
    _core("PE-Core-T16-384", 384, 16, 192, 12, 3, 768, 512, "vit_pe_core_tiny_patch16_384"),
    _core("PE-Core-S16-384", 384, 16, 384, 12, 6, 1536, 512, "vit_pe_core_small_patch16_384"),
    _core("PE-Core-B16-224", 224, 16, 768, 12, 12, 3072, 1024, "vit_pe_core_base_patch16_224"),
    _core("PE-Core-L14-336", 336, 14, 1024, 24, 16, 4096, 1024, "vit_pe_core_large_patch14_336"),
    _core("PE-Core-G14-448", 448, 14, 1536, 50, 16, 8960, 1280, "vit_pe_core_gigantic_patch14_448", cls=False),
    _tokens("Lang", "PE-Lang-L14-448", 448, 14, 1024, 23, 16, 4096, 0.1,
            "vit_pe_lang_large_patch14_448", alias="L14"),
    _tokens("Lang", "PE-Lang-G14-448", 448, 14, 1536, 47, 16, 8960, 0.1,
            "vit_pe_lang_gigantic_patch14_448", cls=False, alias="G14"),
    # the Lang architectures with weights aligned with tiling (PerceptionLM's inputs); timm has no names for them
    _tokens("Lang", "PE-Lang-L14-448-Tiling", 448, 14, 1024, 23, 16, 4096, 0.1, ""),
    _tokens("Lang", "PE-Lang-G14-448-Tiling", 448, 14, 1536, 47, 16, 8960, 0.1, "", cls=False),
    _tokens("Spatial", "PE-Spatial-T16-512", 512, 16, 192, 12, 3, 768, None, "vit_pe_spatial_tiny_patch16_512"),
    _tokens("Spatial", "PE-Spatial-S16-512", 512, 16, 384, 12, 6, 1536, None, "vit_pe_spatial_small_patch16_512"),
    _tokens("Spatial", "PE-Spatial-B16-512", 512, 16, 768, 12, 12, 3072, None, "vit_pe_spatial_base_patch16_512"),
    _tokens("Spatial", "PE-Spatial-L14-448", 448, 14, 1024, 24, 16, 4096, None, "vit_pe_spatial_large_patch14_448"),
    _tokens("Spatial", "PE-Spatial-G14-448", 448, 14, 1536, 50, 16, 8960, 0.1,
            "vit_pe_spatial_gigantic_patch14_448", cls=False),
)


def _plm(name: str, tower: str, dim: int) -> Variant:
    """A PerceptionLM vision model: the tower's tokens without the class token, then the projector."""
    return replace(next(v for v in VARIANTS if v.name == tower), name=name, family="PLM", timm_name="", alias=None,
                   projector_dim=dim)


VARIANTS += (
    _plm("PLM-1B", "PE-Lang-L14-448", 2048),
    _plm("PLM-3B", "PE-Lang-L14-448", 3072),
    _plm("PLM-8B", "PE-Lang-G14-448", 4096),
)


def _lookup_table() -> dict[str, Variant]:
    table: dict[str, Variant] = {}
    for v in VARIANTS:
        for key in (v.name, v.timm_name, v.hub_repo, v.alias):
            if key:
                table[key.lower()] = v
    return table


def get_variant(name: str | Variant) -> Variant:
    """Resolve a canonical name, a short alias (L14, G14), a timm name or a hub repo, case-insensitively.

    Unknown names raise a UsageError that suggests the closest known names.
    """
    if isinstance(name, Variant):
        return name
    table = _lookup_table()
    key = name.strip().lower()
    if key.endswith(".fb"):  # timm's pretrained tag, e.g. vit_pe_lang_large_patch14_448.fb
        key = key[:-3]
    if key in table:
        return table[key]
    choices = [v.name for v in VARIANTS] + [v.alias for v in VARIANTS if v.alias]
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.4)
    close += [c for c in difflib.get_close_matches(key, [c.lower() for c in choices], n=3, cutoff=0.4)]
    hint = ", ".join(dict.fromkeys(_canonical_case(c) for c in close)) or "see `pe-export variants`"
    raise UsageError(f"unknown variant '{name}'; did you mean: {hint}?")


def _canonical_case(name: str) -> str:
    return next((c for v in VARIANTS for c in (v.name, v.alias) if c and c.lower() == name.lower()), name)


def check_output(variant: Variant, output: OutputKind, layer: int, strip_cls: bool) -> None:
    """Refuse combinations the variant cannot give, naming the flag to change."""
    if output == "pooled" and not variant.attn_pool:
        raise UsageError(f"{variant.name} has no attention pooler; use --features tokens")
    if output == "image_features" and not variant.projector_dim:
        raise UsageError(f"{variant.name} has no projector; image_features are PLM's (use --features tokens)")
    if output != "tokens" and (layer != -1 or strip_cls):
        raise UsageError("--layer and --strip-cls apply to --features tokens only")
    if not -variant.layers <= layer < variant.layers:
        raise UsageError(f"--layer {layer} is out of range for {variant.layers} blocks")
    if strip_cls and not variant.cls_token:
        raise UsageError(f"{variant.name} has no class token to strip")
