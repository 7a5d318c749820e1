"""pe-export: Meta's Perception Encoder vision towers to ONNX, precision variants and TensorRT engines."""

__version__ = "0.1.0"
