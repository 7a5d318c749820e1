"""Target runtimes: the opset and lowerings each reads best, and what it cannot run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pe_export.errors import UsageError

Lowering = Literal["fused", "decomposed"]


@dataclass(frozen=True)
class Target:
    name: str
    runtime: str
    opset: int
    rope: Lowering
    attention: Lowering
    max_opset: int
    runs_rotary: bool  # ai.onnx RotaryEmbedding (TensorRT >= 10.15)
    runs_attention: bool  # ai.onnx Attention (TensorRT >= 10.14)
    single_output_attention: bool  # TensorRT maps only the one-output Attention to its fused kernel


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("trt11", "TensorRT 11.x", 23, "fused", "fused", 25, True, True, True),
        Target("trt10.15", "TensorRT 10.15+", 23, "fused", "fused", 24, True, True, True),
        Target("trt10", "TensorRT 10.0-10.13", 17, "decomposed", "decomposed", 20, False, False, True),
        Target("jetson", "TensorRT 10.3 on Jetson (JetPack 6)", 17, "decomposed", "decomposed", 20, False, False, True),
        # Fused RoPE and attention measured fastest on onnxruntime CPU (benchmarks/onnx_latency.py).
        Target("ort", "onnxruntime (CPU, CUDA)", 23, "fused", "fused", 23, True, True, False),
    )
}
DEFAULT_TARGET = "trt11"


def get_target(name: str) -> Target:
    try:
        return TARGETS[name.lower()]
    except KeyError:
        raise UsageError(f"unknown target '{name}'; choose one of: {', '.join(TARGETS)}") from None
