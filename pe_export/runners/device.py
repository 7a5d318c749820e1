"""Names of the devices runners run on."""

from __future__ import annotations

import platform
import re
from pathlib import Path
from typing import Literal

Device = Literal["cpu", "cuda"]
CPUINFO = Path("/proc/cpuinfo")
# The CPU's low-precision matrix instructions, which decide what bf16 and int8 can gain on it.
MATRIX_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni")


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it, with the core count torch uses and its matrix instructions."""
    import torch

    model, matrix = _model_and_matrix_flags()
    return f"{model} ({torch.get_num_threads()} threads; {', '.join(matrix) or 'no bf16/int8 matrix instructions'})"


def cpu_kind() -> str:
    """A file-name-safe key for the CPU's model and matrix instructions (no thread count): runtimes'
    speed ratios differ between CPU kinds, so latency baselines are kept per kind."""
    model, matrix = _model_and_matrix_flags()
    return re.sub(r"[^a-z0-9_]+", "-", " ".join([model, *matrix]).lower()).strip("-")


def _model_and_matrix_flags() -> tuple[str, list[str]]:
    fields = _cpuinfo()
    flags = set(fields.get("flags", "").split())
    model = fields.get("model name") or platform.processor() or platform.machine()
    return model, [flag for flag in MATRIX_FLAGS if flag in flags]


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (Linux); empty elsewhere."""
    fields: dict[str, str] = {}
    if CPUINFO.is_file():
        for line in CPUINFO.read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


def cuda_name() -> str:
    import torch

    props = torch.cuda.get_device_properties(0)
    return f"{props.name} (sm_{props.major}{props.minor})"
