"""The torch worker of `pe-export openvino` (`python -m pe_export.pipeline.worker JOB`, see
`pe_export.processes`): the plan's torch half in a process of its own, whose memory goes back to the
system before OpenVINO's worker starts. Its jobs: a checkpoint's weights digest (which torch reads), and
the ONNX the IR is converted from, made or reused (starting from the digests its parent computed), with
torch fp32's outputs on the parity inputs."""

from __future__ import annotations

import json
from pathlib import Path

from pe_export.artifacts import Digests
from pe_export.pipeline import Plan, find_weights
from pe_export.precision.profiles import Profile
from pe_export.processes import report_progress, worker_main
from pe_export.source import ModelSource


DIGESTS = "digests.json"  # the digest job's result: the digests it computed, for the parent to start from


def run_job(job: dict) -> None:
    if job["job"] == "digest":
        digests = Digests()
        find_weights(ModelSource(**job["source"]), digests)
        (Path(job["work"]) / DIGESTS).write_text(json.dumps(digests.known()))
    else:
        reference_job(job)


def reference_job(job: dict) -> None:
    profile = Profile.model_validate({**job["profile"], "path": job["profile_path"]})
    plan = Plan(ModelSource(**job["source"]), profile, report_progress, Digests(job["digests"]))
    plan.reference(job["precision"]).save(Path(job["work"]))


if __name__ == "__main__":
    worker_main(run_job)
