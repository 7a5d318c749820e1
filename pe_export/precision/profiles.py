"""Calibration profiles: YAML files that say how a variant is exported, calibrated, quantized,
checked and built for one target. Validated by a schema; errors name the file, line and field."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pe_export.errors import UsageError
from pe_export.onnx.lowering import Lowering
from pe_export.onnx.targets import TARGETS
from pe_export.variants import get_variant

Precision = Literal["fp32", "fp16", "bf16", "int8", "fp8"]
PROFILE_DIRS = (Path("profiles"), Path(__file__).resolve().parents[2] / "profiles")
# Kept in fp32 by the fp16/bf16 conversion: normalization and softmax statistics, and the RoPE
# rotation with its cos/sin tables (its nodes are named `.../rotary...` by the exporter).
KEEP_FP32_OPS = ["LayerNormalization", "Softmax", "RotaryEmbedding"]
ROPE_NODES = r"/rotary"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExportSection(Strict):
    target: str = "trt11"
    opset: Optional[int] = None
    rope: Optional[Lowering] = None
    attention: Optional[Lowering] = None
    output: Optional[Literal["tokens", "pooled"]] = None

    @field_validator("target")
    @classmethod
    def _known_target(cls, value: str) -> str:
        if value not in TARGETS:
            raise ValueError(f"unknown target {value!r}; choose one of {', '.join(TARGETS)}")
        return value


def check_batch_range(low: int, opt: int, high: int) -> None:
    """The one rule for a batch range, in profiles and on the command line."""
    if not low <= opt <= high:
        raise ValueError(f"batch range needs min <= opt <= max, got {low}:{opt}:{high}")


class BatchSection(Strict):
    min: int = Field(1, ge=1)
    opt: int = Field(1, ge=1)
    max: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "BatchSection":
        check_batch_range(self.min, self.opt, self.max)
        return self


class CalibrationSection(Strict):
    source: str = Field("synthetic", description="'synthetic', an image folder, or a glob such as photos/**/*.jpg")
    samples: int = Field(32, ge=1)
    batch_size: int = Field(4, ge=1)
    seed: int = 0
    method: Literal["entropy", "max"] = "entropy"
    allow_fewer: bool = False
    provider: Literal["cpu", "cuda"] = Field(
        "cpu", description="onnxruntime provider that runs calibration; cuda falls back to cpu where it is missing")


class QuantSection(Strict):
    op_types: list[str] = ["MatMul", "Gemm", "Conv"]
    exclude: list[str] = Field([], description="regular expressions over node names, e.g. '^conv1/'")
    quantize_attention: bool = False


class MixedSection(Strict):
    keep_fp32_ops: list[str] = KEEP_FP32_OPS
    exclude: list[str] = []


class QuantizationSection(Strict):
    fp16: MixedSection = MixedSection()
    bf16: MixedSection = MixedSection()
    int8: QuantSection = QuantSection()
    fp8: QuantSection = QuantSection(op_types=["MatMul", "Gemm", "Conv"])


class TensorRTSection(Strict):
    """Engine build settings; `pe-export trt` options override them."""

    workspace_gib: float = Field(4.0, gt=0)
    opt_level: int = Field(3, ge=0, le=5)
    timing_cache: Optional[Path] = None
    hardware_compat: Literal["none", "ampere+"] = "none"
    version_compatible: bool = False
    dla_core: Optional[int] = Field(None, ge=0)


FP8_MIN_OPSET = 19
DEFAULT_PARITY = {"fp32": 0.99999, "fp16": 0.999, "bf16": 0.99, "int8": 0.99, "fp8": 0.99}


class Profile(Strict):
    name: str
    description: str = ""
    variant: str
    precisions: list[Precision] = ["fp32", "fp16", "bf16", "int8", "fp8"]
    export: ExportSection = ExportSection()
    batch: BatchSection = BatchSection()
    calibration: CalibrationSection = CalibrationSection()
    quantization: QuantizationSection = QuantizationSection()
    parity: dict[Precision, float] = DEFAULT_PARITY
    tensorrt: Optional[TensorRTSection] = TensorRTSection()
    path: Optional[Path] = Field(None, exclude=True)

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, value: str) -> str:
        try:
            return get_variant(value).name
        except UsageError as exc:
            raise ValueError(str(exc)) from None

    def threshold(self, precision: str) -> float:
        return {**DEFAULT_PARITY, **self.parity}[precision]

    def require(self, precision: str) -> None:
        if precision not in self.precisions:
            raise UsageError(
                f"profile {self.name} ({self.export.target}) cannot run {precision}; it allows {', '.join(self.precisions)}"
            )
        opset = self.export.opset or TARGETS[self.export.target].opset
        if precision == "fp8" and opset < FP8_MIN_OPSET:
            raise UsageError(
                f"fp8 needs opset {FP8_MIN_OPSET} or higher (float8 QuantizeLinear), and profile {self.name} exports "
                f"opset {opset} for {self.export.target}; use a TensorRT 10.15+/11 target or set export.opset"
            )


def default_profile(variant: str) -> Profile:
    return Profile(name="default", variant=variant)


def profile_files() -> list[Path]:
    seen: dict[str, Path] = {}
    for folder in PROFILE_DIRS:
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            seen.setdefault(path.name, path)
    return list(seen.values())


def find_profile(name_or_path: str | Path) -> Profile:
    """A profile by file path, or by the `name` inside one of the shipped profiles."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return load_profile(path)
    for candidate in profile_files():
        profile = load_profile(candidate)
        if profile.name == str(name_or_path):
            return profile
    known = ", ".join(load_profile(p).name for p in profile_files()) or "none found"
    raise UsageError(f"no profile named {name_or_path!r}; known profiles: {known}")


def load_profile(path: Path) -> Profile:
    """Parse and validate one YAML profile; any error names the file, the line and the field."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read profile {path}: {exc.strerror}") from None
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UsageError(f"{where}: malformed YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a profile is a YAML mapping with at least 'name' and 'variant'")
    try:
        return Profile.model_validate({**data, "path": path})
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [str(part) for part in error["loc"]]
        line = _line_of(root, loc)
        where = f"{path}:{line}" if line else str(path)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        raise UsageError(f"{where}: field '{'.'.join(loc) or '(top)'}': {message}") from None


def _line_of(node, loc: list[str]) -> int | None:
    """The 1-based line of the deepest YAML node along `loc` that exists."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            break
    return line
