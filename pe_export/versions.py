"""Library versions recorded in manifests and reports."""

from __future__ import annotations

from importlib import metadata

PACKAGES = ("pe-export", "torch", "onnx", "onnxruntime", "onnxscript", "onnxslim")


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found
