"""What an fp32 export is, without making one: the options a user asks for, every choice made
concrete for a variant, the file it goes to, its key, and the result. Nothing here imports torch, so a
command can decide reuse before (or without) loading weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from pe_export import artifacts
from pe_export.errors import UsageError
from pe_export.manifests import ExportManifest, manifest_path
from pe_export.onnx.targets import DEFAULT_TARGET, FUSED_MIN_OPSET, Lowering, Target, get_target
from pe_export.precisions import PRECISIONS
from pe_export.source import WeightSource
from pe_export.variants import OutputKind, Variant, check_output

INPUT_NAME = "pixel_values"
MIN_OPSET = 17
EXPORTER_OPSET = 18  # torch's exporter builds at 18 and up; lower opsets are converted after our passes
# Past this, weights are streamed to `<file>.onnx.data` beside the graph. Protobuf caps a single
# file at 2 GB, and a single-file save holds two extra copies of the weights in memory (the proto
# and its serialized bytes): for L14 that is 4.8 GB peak instead of 1.5 GB.
EXTERNAL_DATA_BYTES = 512 * 2**20


class ExportOptions(BaseModel):
    """What the user asks for; `None` means the target's (or the variant's) default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: str = DEFAULT_TARGET
    opset: Optional[int] = None
    rope: Optional[Lowering] = None
    attention: Optional[Lowering] = None
    batch: Optional[int] = Field(None, ge=1, description="static batch size; None exports a dynamic batch")
    output: Optional[OutputKind] = None
    layer: int = -1
    strip_cls: bool = False
    simplify: bool = False
    min_cosine: float = PRECISIONS["fp32"].threshold  # the export's gate is fp32's parity threshold
    max_abs: float = 1e-4


@dataclass(frozen=True)
class ResolvedExport:
    """Every choice made concrete for one variant; what the manifest records."""

    target: Target
    opset: int
    rope: Lowering
    attention: Lowering
    batch: int | None
    output: OutputKind
    layer: int
    strip_cls: bool
    simplify: bool
    min_cosine: float
    max_abs: float

    @property
    def output_name(self) -> str:
        return self.output

    def as_dict(self) -> dict:
        return {
            "target": self.target.name, "opset": self.opset, "rope": self.rope, "attention": self.attention,
            "batch": self.batch if self.batch else "dynamic", "output": self.output, "layer": self.layer,
            "strip_cls": self.strip_cls, "simplify": self.simplify,
            "parity_threshold": {"min_cosine": self.min_cosine, "max_abs": self.max_abs},
        }

    def file_stem(self, variant_name: str) -> str:
        """`<variant>.<target>` plus a tag for each choice that departs from the target's defaults."""
        t = self.target
        tags = [
            f"op{self.opset}" if self.opset != t.opset else "",
            f"rope-{self.rope}" if self.rope != t.rope else "",
            f"attn-{self.attention}" if self.attention != t.attention else "",
            self.output if self.output != "tokens" else "",
            f"layer{self.layer}" if self.layer != -1 else "",
            "nocls" if self.strip_cls else "",
            f"b{self.batch}" if self.batch else "",
        ]
        return ".".join([variant_name, t.name, *filter(None, tags)])


def resolve(options: ExportOptions, variant: Variant) -> ResolvedExport:
    target = get_target(options.target)
    rope = options.rope or target.rope
    attention = options.attention or target.attention
    opset = options.opset or target.opset
    fused = [f"--{name} fused" for name, mode in (("rope", rope), ("attention", attention)) if mode == "fused"]
    if opset < MIN_OPSET:
        raise UsageError(f"opset {opset} is below the lowest supported ({MIN_OPSET})")
    if fused and opset < FUSED_MIN_OPSET:
        raise UsageError(
            f"{' and '.join(fused)} needs opset {FUSED_MIN_OPSET} or higher, not {opset}; "
            "use --rope decomposed --attention decomposed, or --opset 23"
        )
    output = options.output or variant.default_output
    check_output(variant, output, options.layer, options.strip_cls)
    return ResolvedExport(
        target, opset, rope, attention, options.batch, output, options.layer, options.strip_cls,
        options.simplify, options.min_cosine, options.max_abs,
    )


@dataclass(frozen=True)
class ExportResult:
    path: Path
    manifest: ExportManifest

    @property
    def manifest_path(self) -> Path:
        return manifest_path(self.path)


def default_output_path(variant: Variant, spec: ResolvedExport, root: Path = artifacts.ROOT) -> Path:
    return root / variant.name / f"{spec.file_stem(variant.name)}.onnx"


def export_key(variant: Variant, weights: WeightSource, spec: ResolvedExport) -> dict:
    """Everything an export depends on: the weights and every option."""
    return {"kind": "onnx", "variant": variant.name, "weights": {"sha256": weights.sha256, "seed": weights.seed},
            "options": spec.as_dict()}


