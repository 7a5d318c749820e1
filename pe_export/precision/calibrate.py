"""Activation ranges by streaming calibration batches through onnxruntime's own calibrators.

The calibrators merge batch by batch (histograms for entropy, running extremes for max), so memory
stays at one batch of intermediate tensors, whatever the number of samples; an in-memory
calibrator (ModelOpt's) keeps every batch, about 0.7 GB per L14 sample. The calibration runs in a
worker process started as this module (`python -m pe_export.precision.calibrate JOB`), so that its
memory goes back to the system when it ends, it never imports the caller's main script, and it dies
with its parent (Linux) instead of holding gigabytes as an orphan.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pe_export.errors import PeExportError
from pe_export.processes import die_with_parent
from pe_export.runners.onnxruntime import CPU, PROVIDERS

PROGRESS = "pe-export-calibrated "  # the worker's progress lines on stdout: "<images done> <total>"


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
                    input_name: str, work: Path, provider: str = "cpu",
                    progress: Callable[[int, int], None] = lambda done, total: None) -> dict[str, float]:
    """The symmetric range (absolute maximum) of every activation around the `op_types` nodes.

    Every file the calibration writes (onnxruntime's shape-inferred and augmented copies of the
    model) lands in `work`; `progress(images done, total)` follows the batches.
    """
    data = work / "calibration.npy"
    np.save(data, calibration)
    job = work / "job.json"
    job.write_text(json.dumps({
        "model": str(_copied_model(Path(model), work)), "data": str(data), "batch_size": batch_size, "method": method,
        "op_types": op_types, "input_name": input_name, "work": str(work), "parent": os.getpid(),
        "providers": [PROVIDERS["cuda"], CPU] if calibration_provider(provider) == "cuda" else [CPU],
    }))
    # the worker imports this very package, whichever pe-export its interpreter would find first
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    worker = subprocess.Popen([sys.executable, "-m", "pe_export.precision.calibrate", str(job)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in worker.stdout:  # type: ignore[union-attr]
            if line.startswith(PROGRESS):
                done, total = map(int, line[len(PROGRESS):].split())
                progress(done, total)
        error = worker.stderr.read()  # type: ignore[union-attr]
        if worker.wait() != 0:
            last = (error.strip().splitlines() or ["no message"])[-1]
            raise PeExportError(f"calibration failed in its worker process (exit {worker.returncode}): {last}")
    finally:
        if worker.poll() is None:  # interrupted: the worker goes with us
            worker.kill()
            worker.wait()
    return json.loads((work / "ranges.json").read_text())


def _copied_model(model: Path, work: Path) -> Path:
    """A copy of the model (its external data too) in `work`, so that the files onnxruntime writes
    beside the model it reads stay in the caller's scratch folder. A copy, since onnx refuses external
    data behind a symbolic or hard link; the copy goes with the scratch folder."""
    for source in [model, *model.parent.glob(f"{model.name}.data")]:
        if not (work / source.name).exists():
            shutil.copyfile(source, work / source.name)
    return work / model.name


def _calibrate(job: dict) -> dict[str, float]:
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    calibration = np.load(job["data"], mmap_mode="r")
    batch_size = job["batch_size"]
    with contextlib.redirect_stdout(io.StringIO()):  # onnxruntime's own narration ("Number of tensors ...")
        calibrator = create_calibrator(
            job["model"], op_types_to_calibrate=job["op_types"],
            augmented_model_path=str(Path(job["work"]) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Entropy if job["method"] == "entropy" else CalibrationMethod.MinMax,
            use_external_data_format=True, providers=job["providers"], extra_options={"symmetric": True},
        )
    # one batch per call: each call merges its batch into the running ranges and drops the tensors
    for start in range(0, len(calibration), batch_size):
        feed = {job["input_name"]: np.ascontiguousarray(calibration[start:start + batch_size])}
        with contextlib.redirect_stdout(io.StringIO()):
            calibrator.collect_data(_OneBatch(feed))
        print(f"{PROGRESS}{min(start + batch_size, len(calibration))} {len(calibration)}", flush=True)
    with contextlib.redirect_stdout(io.StringIO()):
        ranges = calibrator.compute_data()
    return {name: float(max(np.abs(np.asarray(v, dtype=np.float64)).max() for v in ranges[name].range_value))
            for name in ranges}


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    die_with_parent(job["parent"])
    ranges = _calibrate(job)
    (Path(job["work"]) / "ranges.json").write_text(json.dumps(ranges))


if __name__ == "__main__":
    main(sys.argv[1])
