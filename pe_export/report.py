"""The stable report schema of parity and latency results, and its renderings.

    {"schema": "pe-export/<kind>/1", "variant", "device", "versions", "settings", "results": [...]}

A latency row: backend, precision, batch, latency_ms {min, mean, p50, p90, p95, p99},
throughput_ips, peak_rss_mb. A load row (a served model): concurrency, batch, seconds, requests,
errors, first_error, latency_ms, throughput_ips. A parity row: artifact, backend, precision, cosine_mean,
cosine_min, max_abs, rel_l2, threshold, passed (plus pooled_cosine, retrieval_top1 and a note).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pe_export.errors import BadReport
from pe_export.manifests import GraphManifest

SCHEMA_VERSION = 1
CompareMode = Literal["absolute", "ratio"]  # how a latency report is compared with a baseline


class LatencyMs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: float
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float


def summarize(samples_ms: list[float]) -> LatencyMs:
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p95, p99 = np.percentile(a, [50, 90, 95, 99])
    return LatencyMs(min=float(a.min()), mean=float(a.mean()), p50=float(p50), p90=float(p90), p95=float(p95), p99=float(p99))


class LatencyRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: str
    precision: str
    batch: int
    latency_ms: LatencyMs
    throughput_ips: float
    peak_rss_mb: float
    gpu_memory_mb: Optional[float] = None
    iters: int


class LoadRow(BaseModel):
    """One concurrency level of a load test against a server: closed-loop clients for a fixed time."""

    model_config = ConfigDict(extra="forbid")
    concurrency: int
    batch: int  # images per request
    seconds: float
    requests: int  # answered without error
    errors: int
    first_error: Optional[str] = None
    latency_ms: Optional[LatencyMs]  # of the answered requests; None when none was
    throughput_ips: float


class ParityRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    artifact: str
    backend: str
    precision: str
    cosine_mean: Optional[float]
    cosine_min: Optional[float]
    max_abs: Optional[float]
    rel_l2: Optional[float]
    threshold: float
    passed: Optional[bool]  # None: not run here, `note` says why
    pooled_cosine: Optional[float] = None
    retrieval_top1: Optional[float] = None
    note: Optional[str] = None

    @classmethod
    def recorded(cls, data: dict) -> "ParityRow":
        """The row an artifact's manifest recorded, without the fields the manifest adds (inputs)."""
        return cls(**{k: v for k, v in data.items() if k in cls.model_fields})


@dataclass(frozen=True)
class PrecisionResult:
    """A precision artifact that passed its gate: its path, its manifest and its parity row."""

    path: Path
    manifest: GraphManifest  # a PrecisionManifest or an IRManifest
    parity: ParityRow
    reused: bool = False  # found made from the same key, not made by this call

    @classmethod
    def recorded(cls, path: Path, manifest: GraphManifest) -> "PrecisionResult":
        """A reused artifact, with the parity row its manifest recorded."""
        return cls(path, manifest, ParityRow.recorded(manifest.parity), reused=True)  # type: ignore[attr-defined]


class Report(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    schema_: str = Field(alias="schema")
    variant: str
    device: str
    versions: dict[str, Optional[str]]
    settings: dict
    results: list[Union[LatencyRow, ParityRow, LoadRow]]
    interrupted: bool = False

    @property
    def kind(self) -> Literal["latency", "parity", "load"]:
        return self.schema_.split("/")[1]  # type: ignore[return-value]

    def to_json(self) -> dict:
        return self.model_dump(by_alias=True)

    def write(self, json_path: Path | None = None, md_path: Path | None = None) -> None:
        if json_path:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        if md_path:
            md_path.parent.mkdir(parents=True, exist_ok=True)
            md_path.write_text(to_markdown(self) + "\n")


def make_report(kind: str, variant: str, device: str, versions: dict, settings: dict, results: list,
                interrupted: bool = False) -> Report:
    return Report(schema_=f"pe-export/{kind}/{SCHEMA_VERSION}", variant=variant, device=device, versions=versions,
                  settings=settings, results=results, interrupted=interrupted)


def load_report(path: Path) -> Report:
    """Read and validate a report file; rows must match its kind."""
    try:
        data = json.loads(Path(path).read_text())
        schema = str(data.get("schema", "")) if isinstance(data, dict) else ""
        row_type = {"latency": LatencyRow, "parity": ParityRow, "load": LoadRow}.get(schema.split("/")[1] if "/" in schema else "")
        if row_type is None or not schema.startswith("pe-export/"):
            raise BadReport(f"{path}: unknown report schema {schema!r}")
        return Report.model_validate({**data, "results": [row_type.model_validate(r) for r in data.get("results", [])]})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BadReport(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    except OSError as exc:
        raise BadReport(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:  # not JSON
        if isinstance(exc, BadReport):
            raise
        raise BadReport(f"{path} is not a JSON report: {exc}") from None


def to_markdown(report: Report) -> str:
    title = f"**{report.variant}** on {report.device}"
    if report.kind == "latency":
        head = "| backend | precision | batch | p50 ms | p90 ms | p99 ms | mean ms | img/s | peak RSS MB |\n|---|---|---|---|---|---|---|---|---|"
        lines = [
            f"| {r.backend} | {r.precision} | {r.batch} | {r.latency_ms.p50:.2f} | {r.latency_ms.p90:.2f} | "
            f"{r.latency_ms.p99:.2f} | {r.latency_ms.mean:.2f} | {r.throughput_ips:.1f} | {r.peak_rss_mb:.0f} |"
            for r in report.results
        ]
    elif report.kind == "load":
        head = "| concurrency | batch | requests | errors | img/s | p50 ms | p90 ms | p99 ms |\n|---|---|---|---|---|---|---|---|"
        lines = [
            f"| {r.concurrency} | {r.batch} | {r.requests} | {r.errors} | {r.throughput_ips:.2f} | "
            + " | ".join(_f(getattr(r.latency_ms, p, None), ".1f") for p in ("p50", "p90", "p99")) + " |"
            for r in report.results
        ]
    else:
        head = "| artifact | backend | precision | cosine mean | cosine min | pooled cosine | max abs | rel L2 | top-1 agree | threshold | result |\n|---|---|---|---|---|---|---|---|---|---|---|"
        lines = [
            f"| {r.artifact} | {r.backend} | {r.precision} | {_f(r.cosine_mean, '.6f')} | {_f(r.cosine_min, '.6f')} | "
            f"{_f(r.pooled_cosine, '.6f')} | {_f(r.max_abs, '.2e')} | {_f(r.rel_l2, '.2e')} | {_f(r.retrieval_top1, '.2%')} | "
            f"{r.threshold} | {'pass' if r.passed else 'FAIL' if r.passed is False else r.note or 'skipped'} |"
            for r in report.results
        ]
    tail = ["", "_interrupted: finished rows only_"] if report.interrupted else []
    return "\n".join([title, "", head, *lines, *tail])


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)
