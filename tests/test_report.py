"""The report schema: JSON round trip, Markdown, and refusal of files that are not reports."""

from __future__ import annotations

import json

import pytest

from pe_export.report import load_report

SPATIAL = "PE-Spatial-T16-512"


def test_report_round_trips_through_json(latency_report, tmp_path):
    report = latency_report([("torch", 100.0), ("onnxruntime", 80.0)])
    path = tmp_path / "r.json"
    report.write(path, tmp_path / "r.md")
    data = json.loads(path.read_text())
    assert data["schema"] == "pe-export/latency/1" and list(data)[:6] == ["schema", "variant", "device", "versions", "settings", "results"]
    assert set(data["results"][0]) >= {"backend", "precision", "batch", "latency_ms", "throughput_ips", "peak_rss_mb"}
    assert set(data["results"][0]["latency_ms"]) == {"min", "mean", "p50", "p90", "p95", "p99"}
    assert load_report(path) == report
    assert "| onnxruntime | fp32 | 1 | 80.00 |" in (tmp_path / "r.md").read_text()


def test_report_validation_rejects_bad_files(latency_report, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"schema": "something/else/1", "results": []}))
    with pytest.raises(ValueError, match="unknown report schema"):
        load_report(path)
    good = latency_report([("torch", 1.0)]).to_json()
    del good["results"][0]["latency_ms"]["p99"]
    path.write_text(json.dumps(good))
    with pytest.raises(ValueError):
        load_report(path)
