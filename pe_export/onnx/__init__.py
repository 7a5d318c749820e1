"""ONNX export of PE at its native size, lowered for the target runtime, and its static check."""
