"""Names of the devices runners run on."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Literal

Device = Literal["cpu", "cuda"]


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it, with the core count torch uses."""
    import torch

    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} ({torch.get_num_threads()} threads)"


def cuda_name() -> str:
    import torch

    props = torch.cuda.get_device_properties(0)
    return f"{props.name} (sm_{props.major}{props.minor})"
