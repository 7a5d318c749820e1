"""The worker processes of `pe-export openvino` (`python -m pe_export.openvino.worker JOB`, see
`pe_export.processes`), one job each:

- `reference`, the torch half: load the weights, make or reuse the ONNX the IR is converted from,
  compute torch fp32's outputs on the parity inputs and save them;
- `ir`, OpenVINO's half, which never imports torch: convert the ONNX to IR and prove it against
  those outputs.

Each gives its memory back to the system when it ends, before the next starts."""

from __future__ import annotations

from pathlib import Path

from pe_export.memory import release_memory
from pe_export.openvino.ir import PARITY, Reference, convert, ir_path, request_profile, source_precision, torch_reference
from pe_export.processes import report_progress, worker_main
from pe_export.source import ModelSource
from pe_export.validate import artifact_parity
from pe_export.variants import get_variant


def _reference_job(job: dict) -> None:
    from pe_export.model import load_source  # torch: only in this job
    from pe_export.onnx.export import ensure_onnx_freeing
    from pe_export.precision.quantize import export_options, precision_onnx

    source = ModelSource(**job["source"])
    variant = get_variant(source.variant)
    profile = request_profile(variant, job["profile"], job["calib"], job["samples"])
    precision = job["precision"]
    report_progress("loading weights")
    loaded = load_source(source)
    fp32, freed = ensure_onnx_freeing(loaded, export_options(profile), report_progress)
    if freed:
        report_progress("loading weights again")
        loaded = load_source(source)
    onnx_path = fp32.path if source_precision(precision) == "fp32" else precision_onnx(loaded, precision, profile,
                                                                                       report_progress)
    torch_reference(loaded, onnx_path, ir_path(variant, profile, precision), report_progress).save(Path(job["work"]))


def _ir_job(job: dict) -> None:
    work, destination = Path(job["work"]), Path(job["destination"])
    reference, xml, precision = Reference.load(work), work / destination.name, job["precision"]
    report_progress(f"converting {reference.onnx_path.name} to OpenVINO IR")
    convert(reference.onnx_path, xml, compress_to_fp16=precision == "bf16", destination=destination)
    release_memory()
    report_progress(f"proving {precision} parity on OpenVINO")
    # one image at a time: the compiled model holds 1.8x the fp32 weights already
    row = artifact_parity(xml, reference.outputs, reference.inputs, job["threshold"], chunk=1)
    (work / PARITY).write_text(row.model_dump_json())


JOBS = {"reference": _reference_job, "ir": _ir_job}

if __name__ == "__main__":
    worker_main(lambda job: JOBS[job["job"]](job))
