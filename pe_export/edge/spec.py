"""What an on-device program is, without making one: the precisions and delegates it is made for, the
file it goes to and its key. Nothing here imports torch, so a command can decide reuse before (or
without) loading weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from pe_export import artifacts
from pe_export.errors import UsageError
from pe_export.onnx.spec import ResolvedExport
from pe_export.runners.executorch import PRECISIONS as EXECUTORCH_PRECISIONS
from pe_export.source import WeightSource
from pe_export.variants import Variant
from pe_export.versions import versions

Delegate = Literal["xnnpack", "coreml"]
DELEGATES: tuple[str, ...] = get_args(Delegate)
# XNNPACK runs on every ARM and x86 CPU, so its programs are proven here; Core ML runs on Apple devices only
RUNS_HERE: dict[str, bool] = {"xnnpack": True, "coreml": False}
KIND = "executorch-program"
LOWERED_BY = ("torch", "executorch", "torchao")  # a new release of any may lower differently: part of the key
CALIBRATED = ("int8",)
# XNNPACK's int8 kernels: weights symmetric per output channel, activations per tensor with static scales
INT8_SCHEME = {"method": "pt2e", "quantizer": "xnnpack", "weights": "int8 symmetric per channel",
               "activations": "int8 per tensor, static"}


@dataclass(frozen=True)
class ProgramRequest:
    """One program: the output head an ONNX export of the profile would carry (its static batch, 1
    where the export's is dynamic: a program's shapes are fixed when it is traced), a precision and a
    delegate."""

    spec: ResolvedExport
    precision: str
    delegate: str

    @property
    def batch(self) -> int:
        return self.spec.batch or 1

    @property
    def runs_here(self) -> bool:
        return RUNS_HERE[self.delegate]

    def options(self) -> dict:
        """The output options the manifest records (what runners and parity read)."""
        return {"output": self.spec.output, "layer": self.spec.layer, "strip_cls": self.spec.strip_cls,
                "batch": self.batch}

    def path(self, variant: Variant, root: Path = artifacts.ROOT) -> Path:
        """`artifacts/<variant>/<variant>[.<tags>].<precision>[.<delegate>].pte`: the tags are the export's
        output tags (pooled, layer, nocls, batch); XNNPACK is the default delegate and is not named."""
        s = self.spec
        tags = [s.output if s.output != "tokens" else "", f"layer{s.layer}" if s.layer != -1 else "",
                "nocls" if s.strip_cls else "", f"b{self.batch}" if self.batch > 1 else "", self.precision,
                self.delegate if self.delegate != "xnnpack" else ""]
        return root / variant.name / ".".join([variant.name, *filter(None, tags), "pte"])

    @property
    def calibrated(self) -> bool:
        return self.precision in CALIBRATED

    def key(self, variant: Variant, weights: WeightSource, threshold: float, calibration: dict | None = None) -> dict:
        """Everything a program depends on: the weights, the output options, precision, delegate, parity
        threshold, the libraries that lower it and, for int8, its calibration and quantization scheme."""
        return {"kind": KIND, "variant": variant.name, "weights": {"sha256": weights.sha256, "seed": weights.seed},
                "options": self.options(), "precision": self.precision, "delegate": self.delegate,
                "threshold": threshold, "versions": versions(LOWERED_BY),
                **({"calibration": calibration, "quantization": INT8_SCHEME} if self.calibrated else {})}


def check_request(precision: str, delegate: str) -> None:
    """Refuse, before any work, a precision or delegate the ExecuTorch stage does not make."""
    if precision not in EXECUTORCH_PRECISIONS:
        raise UsageError(f"ExecuTorch programs are made in {', '.join(EXECUTORCH_PRECISIONS)}, not {precision}")
    if delegate not in DELEGATES:
        raise UsageError(f"unknown delegate {delegate!r}; choose one of {', '.join(DELEGATES)}")
    if precision in CALIBRATED and delegate != "xnnpack":
        raise UsageError(f"{precision} programs are made for XNNPACK; Core ML takes fp32 or fp16 (--delegate xnnpack)")
