"""Finding TensorRT and a GPU; what is missing is one clear error with exit code 3."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from pe_export.errors import TensorRTUnavailable

INSTALL = "pip install 'pe-export[tensorrt]' --extra-index-url https://pypi.nvidia.com"


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


def import_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except ImportError:
        raise TensorRTUnavailable(f"TensorRT is not installed; {INSTALL} (needs an NVIDIA GPU and driver)") from None
    return tensorrt


def current_gpu() -> Gpu:
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("no CUDA GPU is visible (torch.cuda.is_available() is False); TensorRT needs one")
    props = torch.cuda.get_device_properties(0)
    return Gpu(props.name, (props.major, props.minor))


def trt_major(trt: ModuleType) -> int:
    return int(str(trt.__version__).split(".")[0])
