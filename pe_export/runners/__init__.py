"""One small interface over the runtimes that execute PE: torch, onnxruntime and TensorRT.

A runner is opened on one model or artifact, runs batches (numpy in, numpy out), reports its
device and library versions, and is closed (also as a context manager). Parity and latency are
written once against this interface.
"""

from pe_export.runners.base import Runner

__all__ = ["Runner"]
