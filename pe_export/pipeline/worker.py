"""The torch worker of `pe-export openvino` (`python -m pe_export.pipeline.worker JOB`, see
`pe_export.processes`): the plan's torch half in a process of its own, whose memory goes back to the
system before OpenVINO's worker starts. It makes or reuses the ONNX the IR is converted from (starting
from the digests its parent computed) and saves torch fp32's outputs on the parity inputs."""

from __future__ import annotations

from pathlib import Path

from pe_export.artifacts import Digests
from pe_export.pipeline import Plan
from pe_export.precision.profiles import Profile
from pe_export.processes import report_progress, worker_main
from pe_export.source import ModelSource


def reference_job(job: dict) -> None:
    profile = Profile.model_validate({**job["profile"], "path": job["profile_path"]})
    plan = Plan(ModelSource(**job["source"]), profile, report_progress, Digests(job["digests"]))
    plan.reference(job["precision"]).save(Path(job["work"]))


if __name__ == "__main__":
    worker_main(reference_job)
