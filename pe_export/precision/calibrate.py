"""Activation ranges by streaming calibration batches through onnxruntime's own calibrators.

ModelOpt's PTQ keeps every calibrated activation of every batch in memory before it computes
ranges: about 0.7 GB per L14 sample, so 32 samples would not fit in 24 GB. onnxruntime's
calibrators merge batch by batch (histograms for entropy, running extremes for max), so here
memory stays at one batch. The result is a TensorRT-style calibration cache that ModelOpt reads
in place of its own ranges.

ModelOpt, once it has run, patches onnxruntime's calibrators for the rest of the process, so the
calibration runs in a fresh process with onnxruntime as released.
"""

from __future__ import annotations

import multiprocessing
import struct
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

INT8_MAX = 127.0


class _OneBatch:
    """A CalibrationDataReader over a single batch."""

    def __init__(self, feed: dict[str, np.ndarray]):
        self.feeds = [feed]

    def get_next(self):
        return self.feeds.pop() if self.feeds else None


def calibration_cache(model: Path, calibration: np.ndarray, batch_size: int, method: str, op_types: list[str],
                      input_name: str, work: Path) -> Path:
    """Write `work/calibration.cache` with one symmetric INT8 scale per calibrated tensor."""
    data = work / "calibration.npy"
    np.save(data, calibration)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_calibrate, model, data, batch_size, method, op_types, input_name, work).result()


def _calibrate(model: Path, data: Path, batch_size: int, method: str, op_types: list[str], input_name: str,
               work: Path) -> Path:
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    calibration = np.load(data, mmap_mode="r")
    calibrator = create_calibrator(
        str(model), op_types_to_calibrate=op_types, augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy if method == "entropy" else CalibrationMethod.MinMax,
        use_external_data_format=True, extra_options={"symmetric": True, "max_intermediate_outputs": 1},
    )
    for start in range(0, len(calibration), batch_size):
        calibrator.collect_data(_OneBatch({input_name: np.ascontiguousarray(calibration[start:start + batch_size])}))
    ranges = calibrator.compute_data()
    lines = ["TRT-8601-EntropyCalibration2"]
    for name in ranges:
        low, high = (np.abs(np.asarray(v, dtype=np.float64)).max() for v in ranges[name].range_value)
        scale = max(float(low), float(high), 1e-12) / INT8_MAX
        lines.append(f"{name}: {struct.pack('!f', scale).hex()}")
    path = work / "calibration.cache"
    path.write_text("\n".join(lines) + "\n")
    return path
