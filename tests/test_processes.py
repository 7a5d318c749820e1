"""Workers as `pe_export.processes` runs them: progress relayed, a pe-export error raised again in the
parent as the same kind of error, any other failure as one line, extra environment passed, peak reported."""

from __future__ import annotations

import textwrap

import pytest

from pe_export.errors import CheckpointError, PeExportError, ToolFailed
from pe_export.processes import run_worker

WORKER = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    from pe_export.errors import CheckpointError
    from pe_export.processes import report_progress, worker_main

    def job(job):
        print("library chatter that is no progress line", flush=True)
        report_progress("step", 1, 2)
        if job["do"] == "usage":
            raise CheckpointError("cannot read x.pt as a PyTorch checkpoint")
        if job["do"] == "crash":
            raise ValueError("boom")
        if job["do"] == "die":
            os._exit(7)
        if job["do"] == "killed":
            os.kill(os.getpid(), 9)
        buffer = bytearray(64 * 2**20)  # 64 MiB, touched
        (Path(job["work"]) / "out.json").write_text(json.dumps({"env": os.environ.get("PE_EXPORT_TEST"), "size": len(buffer)}))

    if __name__ == "__main__":
        worker_main(job)
''')


@pytest.fixture
def worker(tmp_path, monkeypatch):
    (tmp_path / "fake_worker.py").write_text(WORKER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    work = tmp_path / "work"
    work.mkdir()
    return work


def test_a_worker_relays_progress_gets_its_environment_and_reports_its_peak(worker):
    lines = []
    peak = run_worker("fake_worker", {"do": "work"}, worker, "the test job", lines.append, env={"PE_EXPORT_TEST": "set"})
    assert lines == ["step 1 2"]  # its other output is dropped
    assert (worker / "out.json").read_text() == '{"env": "set", "size": 67108864}'
    assert 64 < peak < 1024


def test_a_workers_pe_export_error_is_raised_again_as_the_same_kind(worker):
    with pytest.raises(CheckpointError, match=r"^cannot read x\.pt as a PyTorch checkpoint$") as raised:
        run_worker("fake_worker", {"do": "usage"}, worker, "the test job")
    assert raised.value.exit_code == 2


@pytest.mark.parametrize("do, message", [
    ("crash", "the test job failed in its worker process (exit 1): ValueError: boom"),
    ("die", "the test job failed in its worker process (exit 7): no message"),
    ("killed", "the test job failed: its worker process was killed by SIGKILL (out of memory?)"),
])
def test_any_other_failure_is_one_line_naming_the_job(worker, do, message):
    with pytest.raises(PeExportError) as raised:
        run_worker("fake_worker", {"do": do}, worker, "the test job")
    assert type(raised.value) is ToolFailed and raised.value.exit_code == 4 and str(raised.value) == message
