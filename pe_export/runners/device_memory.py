"""Device memory for runners that bind buffers by address (TensorRT): what they need of CUDA, behind
one small interface, so the same runner code runs on a GPU and, against a host double, in CPU tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np


class Buffer(Protocol):
    """A block of device memory holding one tensor."""

    def data_ptr(self) -> int: ...


class DeviceMemory(Protocol):
    """Buffers, copies and launches on one stream."""

    @property
    def stream(self) -> int:
        """The stream handle work is enqueued on."""
        ...

    def upload(self, array: np.ndarray, into: Buffer | None = None) -> Buffer:
        """Copy a host array to the device, into a new buffer or an existing one of its shape."""
        ...

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> Buffer: ...

    def download(self, buffer: Buffer) -> np.ndarray:
        """The buffer's contents on the host, after the stream's work is done."""
        ...

    def capture(self, launch: Callable[[], None]) -> Callable[[], None]:
        """Run `launch` once, then record it as a graph; returns the replay."""
        ...


class CudaMemory:
    """Torch CUDA tensors on a dedicated stream: the device memory of the first GPU."""

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self._stream = torch.cuda.Stream()

    @property
    def stream(self) -> int:
        return self._stream.cuda_stream

    def upload(self, array: np.ndarray, into: Buffer | None = None) -> Buffer:
        host = self._torch.from_numpy(np.ascontiguousarray(array))
        with self._torch.cuda.stream(self._stream):
            if into is None:
                return host.to("cuda")
            assert isinstance(into, self._torch.Tensor), "a buffer of this memory"
            into.copy_(host)
            return into

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> Buffer:
        torch_dtype = self._torch.from_numpy(np.empty(0, dtype)).dtype
        return self._torch.empty(shape, dtype=torch_dtype, device="cuda")

    def download(self, buffer: Buffer) -> np.ndarray:
        assert isinstance(buffer, self._torch.Tensor), "a buffer of this memory"
        self._torch.cuda.synchronize()
        return buffer.cpu().numpy()

    def capture(self, launch: Callable[[], None]) -> Callable[[], None]:
        with self._torch.cuda.stream(self._stream):
            launch()  # one run before capture, as TensorRT asks
        self._stream.synchronize()
        graph = self._torch.cuda.CUDAGraph()
        with self._torch.cuda.graph(graph, stream=self._stream):
            launch()
        return graph.replay
