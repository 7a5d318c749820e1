"""Serving PE artifacts: Triton Inference Server model repositories."""

from typing import Literal

InstanceKind = Literal["cpu", "gpu"]  # where a Triton model instance runs
