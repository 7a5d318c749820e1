"""Precision variants of the fp32 ONNX: FP16/BF16 mixed precision and INT8/FP8 explicit Q/DQ."""
