"""The precisions pe-export makes, and everything the stages need to know about each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator

from pe_export.errors import UsageError

Kind = Literal["reference", "mixed", "qdq"]


@dataclass(frozen=True)
class PrecisionSpec:
    name: str
    kind: Kind  # reference fp32, mixed precision (fp16/bf16 math), or explicit Q/DQ from calibration
    min_opset: int  # the lowest opset that can carry the precision in an ONNX graph
    threshold: float  # default parity gate: token cosine mean against torch fp32
    runs_on_ort_cpu: bool  # onnxruntime's CPU provider has kernels for it
    calibration_method: Optional[str]  # forced calibration method, whatever the profile says
    torch_dtype: Optional[str]  # the torch dtype a torch runner computes in, where torch has one
    min_sm: Optional[tuple[int, int]] = None  # the oldest GPU compute capability TensorRT computes it on

    @property
    def calibrated(self) -> bool:
        return self.kind == "qdq"


PRECISIONS: dict[str, PrecisionSpec] = {
    p.name: p
    for p in (
        PrecisionSpec("fp32", "reference", 17, 0.99999, True, None, "float32"),
        PrecisionSpec("fp16", "mixed", 17, 0.999, True, None, "float16"),
        # onnxruntime has no bf16 CPU kernels: a bf16 graph is made here but scored on a GPU
        PrecisionSpec("bf16", "mixed", 17, 0.99, False, None, "bfloat16", min_sm=(8, 0)),  # Ampere
        PrecisionSpec("int8", "qdq", 17, 0.99, True, None, None),
        # float8 QuantizeLinear exists from opset 19; TensorRT and ModelOpt take FP8 scales from the max
        PrecisionSpec("fp8", "qdq", 19, 0.99, True, "max", None, min_sm=(8, 9)),  # Ada, Hopper
    )
}

def get_precision(name: str) -> PrecisionSpec:
    try:
        return PRECISIONS[str(name)]
    except KeyError:
        raise UsageError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}") from None


def default_thresholds() -> dict[str, float]:
    return {p.name: p.threshold for p in PRECISIONS.values()}


def _known(name: str) -> str:
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose from {', '.join(PRECISIONS)}")
    return name


PrecisionName = Annotated[str, AfterValidator(_known)]  # a precision field of a pydantic model
