"""Activation ranges by streaming calibration batches through onnxruntime's own calibrators.

The calibrators merge batch by batch (histograms for entropy, running extremes for max), so memory
stays at one batch of intermediate tensors, whatever the number of samples; an in-memory
calibrator (ModelOpt's) keeps every batch, about 0.7 GB per L14 sample. The calibration runs in a
fresh process, so that its memory goes back to the system when it ends.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from pe_export.runners.onnxruntime import CPU, PROVIDERS


class _OneBatch:
    """A CalibrationDataReader over a single batch."""

    def __init__(self, feed: dict[str, np.ndarray]):
        self.feeds = [feed]

    def get_next(self):
        return self.feeds.pop() if self.feeds else None


def calibration_provider(wanted: str) -> str:
    """The provider calibration will run on: CUDA where asked for and present, else CPU."""
    import onnxruntime

    return "cuda" if wanted == "cuda" and PROVIDERS["cuda"] in onnxruntime.get_available_providers() else "cpu"


def activation_amax(model: Path, calibration: np.ndarray, batch_size: int, method: str, op_types: list[str],
                    input_name: str, work: Path, provider: str = "cpu") -> dict[str, float]:
    """The symmetric range (absolute maximum) of every activation around the `op_types` nodes."""
    data = work / "calibration.npy"
    np.save(data, calibration)
    providers = [PROVIDERS["cuda"], CPU] if calibration_provider(provider) == "cuda" else [CPU]
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_calibrate, model, data, batch_size, method, op_types, input_name, work, providers).result()


def _calibrate(model: Path, data: Path, batch_size: int, method: str, op_types: list[str], input_name: str,
               work: Path, providers: list[str]) -> dict[str, float]:
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    calibration = np.load(data, mmap_mode="r")
    calibrator = create_calibrator(
        str(model), op_types_to_calibrate=op_types, augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy if method == "entropy" else CalibrationMethod.MinMax,
        use_external_data_format=True, providers=providers, extra_options={"symmetric": True},
    )
    # one batch per call: each call merges its batch into the running ranges and drops the tensors
    for start in range(0, len(calibration), batch_size):
        calibrator.collect_data(_OneBatch({input_name: np.ascontiguousarray(calibration[start:start + batch_size])}))
    ranges = calibrator.compute_data()
    return {name: float(max(np.abs(np.asarray(v, dtype=np.float64)).max() for v in ranges[name].range_value))
            for name in ranges}
