"""Activation ranges (and the smoothing scales) from calibration batches streamed through the fp32 model.

Only the tensors Q/DQ placement needs (the activation input of each quantized node) leave the
graph, one batch at a time: `max` ranges and the per-channel maxima smoothing needs are reduced
inside the graph to a vector per tensor, and only the entropy method takes whole tensors out,
each fed to onnxruntime's own histogram collector (the one its EntropyCalibrater uses) and
dropped before the next. Memory therefore follows `batch_size` and the quantized inputs, never
`samples`. With smoothing, a first pass measures the per-channel maxima of the LayerNorm outputs
that fold into MatMuls (for the entropy method on the first SMOOTHING_IMAGES images: the scales
balance channels, the ranges are measured after them on every image); the ranges of those tensors
are then taken of X / s, which is what the smoothed LayerNorm outputs. The graphs with the extra
outputs are built in memory and read the weights where they lie: no copy of the model is written.

The work runs in a worker process started as this module (`python -m pe_export.precision.calibrate
JOB`, see `pe_export.processes`), so that its memory goes back to the system when it ends, it never
imports the caller's main script, and it dies with its parent (Linux) instead of holding gigabytes as
an orphan.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pe_export.processes import report_progress, run_worker, worker_main
from pe_export.precision import smooth
from pe_export.runners.onnxruntime import CPU, PROVIDERS

PASSES = {"channels": "measuring channel maxima", "ranges": "calibrating"}  # what each pass is called to the user
_ENTROPY_BINS = 128  # onnxruntime's create_calibrator defaults for the entropy method
SMOOTHING_IMAGES = 8  # images the smoothing scales are measured on when the ranges get a pass of their own


@dataclass(frozen=True)
class Ranges:
    """What calibration gives Q/DQ placement."""

    amax: dict[str, float]  # absolute maximum of each activation (of X / s for smoothed ones)
    scales: dict[str, np.ndarray]  # smoothing scales per LayerNorm output; empty when smoothing is off
    channel_max: dict[str, np.ndarray]  # per-channel maxima of those outputs before smoothing
    peak_rss_mb: float  # the worker's own peak (VmHWM: what it held, not its parent's pages at its start)


def calibration_provider(wanted: str) -> str:
    """The provider calibration will run on: CUDA where asked for and present, else CPU."""
    import onnxruntime

    return "cuda" if wanted == "cuda" and PROVIDERS["cuda"] in onnxruntime.get_available_providers() else "cpu"


def activation_ranges(model: Path, calibration: np.ndarray, batch_size: int, method: str, tensors: list[str],
                      input_name: str, work: Path, provider: str = "cpu",
                      smoothing: tuple[float, dict[str, np.ndarray]] | None = None,
                      progress: Callable[[str, int, int], None] = lambda step, done, total: None) -> Ranges:
    """The symmetric range (absolute maximum) of each tensor in `tensors`, by `method`.

    `smoothing` is (alpha, {LayerNorm output: max|W_j| of the weights reading it}): those tensors
    get smoothing scales and are ranged after division by them. The job and its results are files
    in `work`; `progress(pass, images done, total)` follows the batches.
    """
    data = work / "calibration.npy"
    np.save(data, calibration)
    alpha, weight_max = smoothing if smoothing else (None, {})
    job = {
        "model": str(Path(model).resolve()), "data": str(data), "batch_size": batch_size, "method": method,
        "tensors": tensors, "input_name": input_name,
        "providers": [PROVIDERS["cuda"], CPU] if calibration_provider(provider) == "cuda" else [CPU],
        "alpha": alpha, "weight_max": {name: value.tolist() for name, value in weight_max.items()},
    }

    def relay(line: str) -> None:  # "<pass> <images done> <total>"
        step, done, total = line.split()
        progress(PASSES[step], int(done), int(total))

    worker_peak = run_worker("pe_export.precision.calibrate", job, work, "calibration", relay)
    result = json.loads((work / "ranges.json").read_text())
    return Ranges(result["amax"], {k: np.asarray(v) for k, v in result["scales"].items()},
                  {k: np.asarray(v) for k, v in result["channel_max"].items()}, worker_peak)


# ---- the worker ------------------------------------------------------------------------------------

def _with_outputs(job: dict, channel_max: list[str], whole: list[str],
                  divide: dict[str, np.ndarray]) -> tuple[bytes, list[str]]:
    """The model's graph with extra outputs: the per-channel absolute maximum (over every axis but
    the last) of each tensor in `channel_max`, and each tensor in `whole` as it is, divided by its
    smoothing scales where `divide` has them. Its weights stay where they are: external data is
    read from the model's folder (see `_stream`)."""
    model = onnx.load(job["model"], load_external_data=False)
    graph = model.graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.value_info, *graph.input, *graph.output]}
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    del graph.output[:]
    names = []
    for i, tensor in enumerate(channel_max):
        axes = list(range(ranks[tensor] - 1))
        reduce_inputs = [f"{tensor}/abs"]
        attributes = {"keepdims": 0}
        if opset >= 18:  # ReduceMax takes its axes as an input from opset 18 on
            graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), f"pe_export/axes_{i}"))
            reduce_inputs.append(f"pe_export/axes_{i}")
        else:
            attributes["axes"] = axes
        graph.node.extend([
            helper.make_node("Abs", [tensor], [f"{tensor}/abs"]),
            helper.make_node("ReduceMax", reduce_inputs, [f"{tensor}/channel_max"], **attributes),
        ])
        names.append(f"{tensor}/channel_max")
    for i, tensor in enumerate(whole):
        if tensor in divide:
            graph.initializer.append(numpy_helper.from_array(divide[tensor].astype(np.float32), f"pe_export/scale_{i}"))
            graph.node.append(helper.make_node("Div", [tensor, f"pe_export/scale_{i}"], [f"{tensor}/smoothed"]))
            names.append(f"{tensor}/smoothed")
        else:
            names.append(tensor)
    graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    return model.SerializeToString(), names


def _batches(job: dict, step: str, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The calibration batches (the first `limit` images of them), `batch_size` images at a time,
    reporting each as done."""
    calibration = np.load(job["data"], mmap_mode="r")[:limit]
    size = job["batch_size"]
    for start in range(0, len(calibration), size):
        yield {job["input_name"]: np.ascontiguousarray(calibration[start:start + size])}
        report_progress(step, min(start + size, len(calibration)), len(calibration))


def _stream(job: dict, graph: bytes, names: list[str], step: str, take: Callable[[str, np.ndarray], None],
            limit: int | None = None) -> None:
    """Run the batches through `graph` and hand each requested output to `take`, one tensor at a time."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # the graph comes from memory: its external weights are those beside the model, read in place
    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     str(Path(job["model"]).parent))
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL  # the tensors as named
    options.enable_cpu_mem_arena = False  # buffers go back as soon as they are dropped, batch after batch
    options.enable_mem_pattern = False
    session = onnxruntime.InferenceSession(graph, options, providers=job["providers"])
    for feed in _batches(job, step, limit):
        values = session.run_with_ort_values(
            names, {k: onnxruntime.OrtValue.ortvalue_from_numpy(v) for k, v in feed.items()})
        for name, value in zip(names, values):
            take(name, value.numpy())
        del values


def _calibrate(job: dict) -> dict:
    from onnxruntime.quantization.calibrate import HistogramCollector

    tensors, weight_max = job["tensors"], {k: np.asarray(v) for k, v in job["weight_max"].items()}
    entropy = job["method"] == "entropy"
    # One pass of in-graph maxima serves the smoothing scales and, for `max`, every range. With
    # entropy the ranges come from a second pass over X / s, so the scales (a balance, not a range)
    # need only the first SMOOTHING_IMAGES images.
    measured = list(tensors) if not entropy else sorted(weight_max)
    channel_max: dict[str, np.ndarray] = {}
    if measured:
        graph, names = _with_outputs(job, measured, [], {})
        _stream(job, graph, names, "channels", lambda name, value: channel_max.__setitem__(
            name, np.maximum(channel_max[name], value) if name in channel_max else value),
            SMOOTHING_IMAGES if entropy else None)
        channel_max = {tensor: channel_max[name] for tensor, name in zip(measured, names)}
    scales = {t: smooth.scales(channel_max[t], w, job["alpha"]) for t, w in weight_max.items()}
    if entropy:
        collector = HistogramCollector(method="entropy", symmetric=True, num_bins=_ENTROPY_BINS,
                                       num_quantized_bins=_ENTROPY_BINS, percentile=99.999, scenario="same")
        graph, names = _with_outputs(job, [], tensors, scales)
        _stream(job, graph, names, "ranges", lambda name, value: _quietly(collector.collect, {name: [value]}))
        thresholds = _quietly(collector.compute_collection_result)
        amax = {t: float(max(abs(thresholds[n][0]), abs(thresholds[n][1]))) for t, n in zip(tensors, names)}
    else:
        amax = {t: float(np.max(channel_max[t] / scales.get(t, 1.0))) for t in tensors}
    return {"amax": amax, "scales": {t: s.tolist() for t, s in scales.items()},
            "channel_max": {t: channel_max[t].tolist() for t in weight_max}}


def _quietly(call: Callable, *args):
    """Call onnxruntime's collector, whose narration would mix with the progress lines on stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        return call(*args)


def _calibration_job(job: dict) -> None:
    (Path(job["work"]) / "ranges.json").write_text(json.dumps(_calibrate(job)))


if __name__ == "__main__":
    worker_main(_calibration_job)
