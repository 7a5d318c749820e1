"""Finding TensorRT and a GPU; what is missing is one clear error with exit code 3."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pe_export.errors import TensorRTUnavailable

if TYPE_CHECKING:
    import tensorrt as trt

INSTALL = "pip install 'pe-export[tensorrt]' --extra-index-url https://pypi.nvidia.com"
# The oldest release whose Python API has every call pe-export makes (strongly typed networks,
# timing caches, execute_async_v3): the TensorRT of JetPack 6.
OLDEST = (10, 3)


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    @property
    def slug(self) -> str:
        """The GPU in a file name: model and compute capability."""
        return re.sub(r"[^A-Za-z0-9]+", "-", self.name).strip("-").lower() + f"-sm{self.sm.replace('.', '')}"


def import_tensorrt():  # the return type is left to inference: the module itself, so its calls are checked
    """The `tensorrt` module, refused with exit code 3 when absent or older than `OLDEST`."""
    try:
        import tensorrt
    except ImportError:
        raise TensorRTUnavailable(f"TensorRT is not installed; {INSTALL} (needs an NVIDIA GPU and driver)") from None
    if release(tensorrt.__version__) < OLDEST:
        raise TensorRTUnavailable(
            f"TensorRT {tensorrt.__version__} is older than {'.'.join(map(str, OLDEST))}, the oldest pe-export supports; {INSTALL}"
        )
    return tensorrt


def release(version: str) -> tuple[int, ...]:
    """'10.13.0.35' -> (10, 13, 0, 35): versions compared as numbers."""
    return tuple(int(part) for part in re.findall(r"\d+", version))


def dims(shape: trt.Dims) -> tuple[int, ...]:
    """TensorRT's Dims as a tuple of ints, read by index (its typed API declares no iteration)."""
    return tuple(int(shape[i]) for i in range(len(shape)))


def current_gpu() -> Gpu:
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("no CUDA GPU is visible (torch.cuda.is_available() is False); TensorRT needs one")
    props = torch.cuda.get_device_properties(0)
    return Gpu(props.name, (props.major, props.minor))
