"""Target runtimes: the opset and lowerings each reads best, and what it cannot run.

What a TensorRT release's ONNX parser takes comes from one table, `TENSORRT_ONNX`, per release; a
named target (trt11, jetson, ...) and any `trt<major>.<minor>` read their row of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pe_export.errors import UsageError

FUSED_MIN_OPSET = 23  # RotaryEmbedding and Attention are ONNX ops from opset 23

Lowering = Literal["fused", "decomposed"]


@dataclass(frozen=True)
class OnnxSupport:
    """What a runtime's ONNX importer documents."""

    max_opset: int
    rotary: bool  # ai.onnx RotaryEmbedding
    attention: bool  # ai.onnx Attention
    single_output_attention: bool  # only the one-output Attention (no present_key/value, qk output)


@dataclass(frozen=True)
class ParserRelease:
    release: tuple[int, int]
    support: OnnxSupport


# Each row holds from its release until the next row: onnx-tensorrt's operators.md gives opset 9-20
# for 10.0 and 9-24 for 10.15; the 10.14 and 10.15 release notes add Attention and RotaryEmbedding
# (Attention is an opset-23 operator, so 10.14 reads opset 23); 11.5 adds opset 25. The parser
# supports Attention without its optional present/qk outputs.
TENSORRT_ONNX: tuple[ParserRelease, ...] = (
    ParserRelease((10, 0), OnnxSupport(20, False, False, True)),
    ParserRelease((10, 14), OnnxSupport(23, False, True, True)),
    ParserRelease((10, 15), OnnxSupport(24, True, True, True)),
    ParserRelease((11, 5), OnnxSupport(25, True, True, True)),
)


def tensorrt_support(release: tuple[int, int]) -> OnnxSupport:
    """The ONNX support of a TensorRT release: the last row at or below it."""
    rows = [row for row in TENSORRT_ONNX if row.release <= release]
    if not rows:
        raise UsageError(f"TensorRT {release[0]}.{release[1]} is older than any release pe-export knows (10.0+)")
    return rows[-1].support


def first_release(feature: str) -> str:
    """The first TensorRT release whose parser has `feature` (an OnnxSupport flag), as '10.15'."""
    row = next(row for row in TENSORRT_ONNX if getattr(row.support, feature))
    return ".".join(map(str, row.release))


@dataclass(frozen=True)
class Target:
    name: str
    runtime: str
    opset: int
    rope: Lowering
    attention: Lowering
    support: OnnxSupport


def tensorrt_target(name: str, runtime: str, release: tuple[int, int]) -> Target:
    """A TensorRT target read from the table: fused RoPE and attention (opset 23) where the release's
    parser takes them, plain ops at opset 17 otherwise."""
    support = tensorrt_support(release)
    rope: Lowering = "fused" if support.rotary else "decomposed"
    attention: Lowering = "fused" if support.attention else "decomposed"
    return Target(name, runtime, 23 if "fused" in (rope, attention) else 17, rope, attention, support)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        tensorrt_target("trt11", "TensorRT 11.x", (11, 0)),
        tensorrt_target("trt10.15", "TensorRT 10.15+", (10, 15)),
        tensorrt_target("trt10", "TensorRT 10.0-10.13", (10, 0)),
        tensorrt_target("jetson", "TensorRT 10.3 on Jetson (JetPack 6)", (10, 3)),
        # Fused RoPE and attention measured fastest on onnxruntime CPU (benchmarks/onnx_latency.py).
        Target("ort", "onnxruntime (CPU, CUDA)", 23, "fused", "fused", OnnxSupport(23, True, True, False)),
    )
}
DEFAULT_TARGET = "trt11"


def get_target(name: str) -> Target:
    """A named target, or `trt<major>.<minor>` for one TensorRT release (e.g. trt10.8)."""
    key = name.lower()
    if key in TARGETS:
        return TARGETS[key]
    match = re.fullmatch(r"trt(\d+)\.(\d+)", key)
    if match:
        major, minor = int(match[1]), int(match[2])
        return tensorrt_target(key, f"TensorRT {major}.{minor}", (major, minor))
    raise UsageError(f"unknown target '{name}'; choose one of: {', '.join(TARGETS)}, or trt<major>.<minor> (e.g. trt10.8)")
