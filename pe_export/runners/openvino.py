"""Running an ONNX file or an OpenVINO IR (.xml) with OpenVINO on the CPU, at the inference precision
the artifact's precision calls for, as far as this CPU can compute it."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from pe_export.errors import Unavailable, UsageError, require_extra
from pe_export.runners.base import Runner

# The inference precision of the float ops for each precision OpenVINO runs. fp32 is asked for
# explicitly, since OpenVINO's CPU default is bf16 wherever the CPU has it. int8 runs its Q/DQ GEMMs
# in int8 and leaves the rest to OpenVINO's default for the CPU (None): bf16 where it has bf16 units,
# else f32. On a 3-block slice of L14 (avx512_bf16, no AMX) that made int8 1.15-1.3x faster than with
# f32 for the rest, at the same token cosine (0.99999) against torch fp32.
INFERENCE_PRECISION: dict[str, str | None] = {"fp32": "f32", "bf16": "bf16", "int8": None}


def require_openvino() -> None:
    require_extra("openvino", "the OpenVINO runtime", "openvino")


@functools.cache
def _cpu_property(name: str) -> object:
    require_openvino()
    import openvino as ov

    return ov.Core().get_property("CPU", name)


def cpu_capabilities() -> frozenset[str]:
    """What OpenVINO's CPU plugin says this CPU computes natively: FP32, BF16 (avx512_bf16 or AMX), INT8, ..."""
    return frozenset(_cpu_property("OPTIMIZATION_CAPABILITIES"))


def runs(precision: str) -> bool:
    """Whether OpenVINO computes the precision on this CPU (bf16 only where the CPU has bf16 units)."""
    return precision in INFERENCE_PRECISION and (precision != "bf16" or "BF16" in cpu_capabilities())


def require_precision(precision: str) -> None:
    """Refuse, before any work, a precision OpenVINO has no path for, or one this CPU cannot compute."""
    require_openvino()
    if precision not in INFERENCE_PRECISION:
        raise UsageError(f"OpenVINO runs {', '.join(INFERENCE_PRECISION)}, not {precision}")
    if not runs(precision):
        raise Unavailable(f"this CPU has no {precision} units (OpenVINO reports "
                          f"{', '.join(sorted(cpu_capabilities()))}); use fp32 or int8 here")


def inference_precision(precision: str) -> str:
    """The precision the float ops of an artifact of `precision` compute in here: f32, bf16 (or f16 where
    OpenVINO's CPU default is f16)."""
    return INFERENCE_PRECISION[precision] or _cpu_property("INFERENCE_PRECISION_HINT").to_string()


class OvRunner(Runner):
    """One compiled OpenVINO model with one infer request, on the CPU, latency mode (one stream)."""

    backend = "openvino"
    gpu = False
    libraries = ("openvino",)

    def __init__(self, path: Path, precision: str = "fp32", threads: int | None = None):
        require_precision(precision)
        import openvino as ov

        self.precision = precision
        self.inference_precision = inference_precision(precision)
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": self.inference_precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        # Weights read into memory rather than mapped: the CPU plugin repacks them anyway, and a mapped
        # .bin stays resident beside the repacked copy (L14 fp32: 2.9 GiB held against 2.4 GiB)
        core.set_property({"ENABLE_MMAP": False})
        try:
            self.compiled = core.compile_model(str(path), "CPU", config)
        except RuntimeError as exc:  # OpenVINO's own errors: a stack of "Exception from ..." lines
            raise UsageError(f"OpenVINO cannot load {path}: {str(exc).strip().splitlines()[-1]}") from None
        self.request = self.compiled.create_infer_request()

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.request.infer({0: batch})[0]  # a copy: the request's own buffer is reused by the next call

    def close(self) -> None:
        self.request = self.compiled = None
