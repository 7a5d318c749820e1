"""The IR worker (`python -m pe_export.openvino.worker JOB`, see `pe_export.processes`), which never
imports torch: convert the ONNX to IR and prove it against the torch outputs the job's `Reference`
holds. Its memory goes back to the system when it ends."""

from __future__ import annotations

from pathlib import Path

from pe_export.memory import release_memory
from pe_export.openvino.ir import PARITY, Reference, convert
from pe_export.processes import report_progress, worker_main
from pe_export.validate import artifact_parity


def ir_job(job: dict) -> None:
    work, destination = Path(job["work"]), Path(job["destination"])
    reference, xml, precision = Reference.load(work), work / destination.name, job["precision"]
    report_progress(f"converting {reference.onnx_path.name} to OpenVINO IR")
    convert(reference.onnx_path, xml, compress_to_fp16=precision == "bf16", destination=destination)
    release_memory()
    report_progress(f"proving {precision} parity on OpenVINO")
    # one image at a time (a static batch needs its own size): the compiled model holds 1.8x the fp32 weights already
    static = reference.options.get("batch")
    row = artifact_parity(xml, reference.outputs, reference.inputs, job["threshold"],
                          chunk=static if isinstance(static, int) else 1, precision=precision)
    (work / PARITY).write_text(row.model_dump_json())


if __name__ == "__main__":
    worker_main(ir_job)
