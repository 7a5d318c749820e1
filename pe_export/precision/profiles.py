"""Calibration profiles: YAML files that say how a variant is exported, calibrated, quantized,
checked and built for one target. Validated by a schema; errors name the file, line and field."""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pe_export.errors import UsageError
from pe_export.onnx.targets import TARGETS, Lowering
from pe_export.precisions import PRECISIONS, PrecisionName, default_thresholds, get_precision
from pe_export.variants import OutputKind, Variant, get_variant

USER_PROFILES = Path("profiles")  # a ./profiles folder beside the user's work overrides a shipped file of the same name
# Kept in fp32 by the fp16/bf16 conversion: normalization and softmax statistics, and the RoPE
# rotation with its cos/sin tables (its nodes are named `.../rotary...` by the exporter).
KEEP_FP32_OPS = ["LayerNormalization", "Softmax", "RotaryEmbedding"]
ROPE_NODES = r"/rotary"
HardwareCompat = Literal["none", "ampere+"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExportSection(Strict):
    target: str = "trt11"
    opset: Optional[int] = None
    rope: Optional[Lowering] = None
    attention: Optional[Lowering] = None
    output: Optional[OutputKind] = None

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


SYNTHETIC = "synthetic"  # calibration on seeded uniform noise instead of images


class CalibrationSection(Strict):
    source: str = Field(SYNTHETIC, description="'synthetic', an image folder, or a glob such as photos/**/*.jpg")
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
    smoothing: Optional[float] = Field(
        0.5, ge=0, le=1, description="SmoothQuant migration strength a for every LayerNorm -> MatMul pair "
        "(s = max|X|^a / max|W|^(1-a)); null turns it off")
    auto_exclude: bool = Field(
        False, description="on a parity miss, keep the most sensitive GEMMs in high precision until it passes")


class MixedSection(Strict):
    keep_fp32_ops: list[str] = KEEP_FP32_OPS
    exclude: list[str] = []


class QuantizationSection(Strict):
    fp16: MixedSection = MixedSection()
    bf16: MixedSection = MixedSection()
    int8: QuantSection = QuantSection()
    fp8: QuantSection = QuantSection()


class TensorRTSection(Strict):
    """Engine build settings; `pe-export trt` options override them."""

    workspace_gib: float = Field(4.0, gt=0)
    opt_level: int = Field(3, ge=0, le=5)
    timing_cache: Optional[Path] = None
    hardware_compat: HardwareCompat = "none"
    version_compatible: bool = False
    dla_core: Optional[int] = Field(None, ge=0)
    tf32: bool = Field(False, description="let fp32 engines compute in TF32 (TensorRT's default; off for fp32 parity)")


class DeploySection(Strict):
    """The path a profile ships: the runtime and precision measured fastest on its target among those that
    pass its parity threshold (the profile's comments give the figures)."""

    runtime: Literal["onnxruntime", "openvino", "tensorrt"]
    precision: PrecisionName


class Profile(Strict):
    name: str
    description: str = ""
    variant: str
    precisions: list[PrecisionName] = list(PRECISIONS)
    export: ExportSection = ExportSection()
    batch: BatchSection = BatchSection()
    calibration: CalibrationSection = CalibrationSection()
    quantization: QuantizationSection = QuantizationSection()
    parity: dict[PrecisionName, float] = Field(default_factory=default_thresholds)
    tensorrt: Optional[TensorRTSection] = TensorRTSection()
    deploy: Optional[DeploySection] = None
    path: Optional[Path] = Field(None, exclude=True)

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, value: str) -> str:
        try:
            return get_variant(value).name
        except UsageError as exc:
            raise ValueError(str(exc)) from None

    def with_calibration(self, source: str | None = None, samples: int | None = None) -> "Profile":
        """This profile with the command line's calibration source and sample count, where given."""
        update = {name: value for name, value in (("source", source), ("samples", samples)) if value is not None}
        return self.model_copy(update={"calibration": self.calibration.model_copy(update=update)}) if update else self

    @field_validator("deploy")
    @classmethod
    def _deploys_an_allowed_precision(cls, value: Optional[DeploySection], info) -> Optional[DeploySection]:
        allowed = info.data.get("precisions", [])
        if value and value.precision not in allowed:
            raise ValueError(f"{value.precision} is not one of the profile's precisions ({', '.join(allowed)})")
        return value

    def deployed_precision(self, runtime: str) -> str | None:
        """The precision this profile ships on `runtime`, if it ships on that runtime."""
        return self.deploy.precision if self.deploy and self.deploy.runtime == runtime else None

    def with_auto_exclude(self, precision: str) -> "Profile":
        """This profile with the automatic fallback on for `precision` (int8 or fp8)."""
        section = getattr(self.quantization, precision).model_copy(update={"auto_exclude": True})
        return self.model_copy(update={"quantization": self.quantization.model_copy(update={precision: section})})

    def require_real_calibration(self, precision: str, real_weights: bool, calib: str | None) -> None:
        """Calibrating real weights on uniform noise is for demos: the profile's synthetic source is
        refused for them unless the command line says `--calib synthetic` itself."""
        if get_precision(precision).calibrated and real_weights and self.calibration.source == SYNTHETIC and calib != SYNTHETIC:
            raise UsageError(
                f"{precision} of real weights needs real calibration images: give --calib a folder or glob of "
                f"{self.calibration.samples} or more representative images (e.g. --calib photos/ or --calib "
                "'photos/**/*.jpg'), or --calib synthetic to calibrate on noise anyway"
            )

    def threshold(self, precision: str) -> float:
        return {**default_thresholds(), **self.parity}[precision]

    def require(self, precision: str) -> None:
        if precision not in self.precisions:
            raise UsageError(
                f"profile {self.name} ({self.export.target}) cannot run {precision}; it allows {', '.join(self.precisions)}"
            )
        opset = self.export.opset or TARGETS[self.export.target].opset
        needed = get_precision(precision).min_opset
        if opset < needed:
            raise UsageError(
                f"{precision} needs opset {needed} or higher for its ONNX types, and profile {self.name} exports "
                f"opset {opset} for {self.export.target}; use a TensorRT 10.15+/11 target or set export.opset"
            )


def default_profile(variant: str) -> Profile:
    return Profile(name="default", variant=variant)


def cpu_profile(variant: str) -> Profile:
    """What CPU runtimes use without a named profile: the onnxruntime export (fused RoPE and attention,
    which OpenVINO reads too) and the default calibration."""
    return Profile(name="cpu", variant=variant, export=ExportSection(target="ort"), tensorrt=None)


def resolve_profile(name_or_path: str | Path | None, variant: Variant) -> Profile:
    """The named profile (or the variant's default), refused when it is for another variant."""
    chosen = find_profile(name_or_path) if name_or_path else default_profile(variant.name)
    if chosen.variant != variant.name:
        raise UsageError(f"profile {chosen.name} is for {chosen.variant}, not {variant.name}")
    return chosen


def profile_sources() -> list[tuple[Path, str]]:
    """Every profile file with where it comes from: "./profiles" (the user's) or "shipped" (package
    data); a user's file hides a shipped one of the same name."""
    shipped = Path(str(importlib.resources.files("pe_export") / "profiles"))
    seen: dict[str, tuple[Path, str]] = {}
    for folder, origin in ((USER_PROFILES, "./profiles"), (shipped, "shipped")):
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            is_shipped = origin == "shipped" or path.resolve() == (shipped / path.name).resolve()
            seen.setdefault(path.name, (path, "shipped" if is_shipped else origin))
    return list(seen.values())


def profile_files() -> list[Path]:
    return [path for path, _ in profile_sources()]


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
