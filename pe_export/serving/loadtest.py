"""`pe-export loadtest`: a served model measured as a serving team does (in the spirit of perf_analyzer).

Per concurrency level, that many clients each send a request, wait for its answer and send the next
(a closed loop) for a fixed time, after one untimed request each: answered images per second, the
latency of answered requests, and the errors. Rows go into the report schema of `bench`
(`pe-export/load/1`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pe_export import __version__
from pe_export.errors import UsageError
from pe_export.report import LoadRow, Report, make_report, summarize
from pe_export.serving.client import RequestFailed, TritonClient, local_address
from pe_export.serving.repository import IMAGES_SUFFIX, PREPROCESS_SUFFIX

INPUT_SEED = 2  # the same inputs on every run


class LoadSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = "http://localhost:8000"
    model: Optional[str] = None  # None: the server's only model
    concurrency: list[int] = [1, 4, 16]
    seconds: float = Field(10, gt=0)
    batch: int = Field(1, ge=1)  # images per request

    @field_validator("concurrency")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if not value or any(c < 1 for c in value):
            raise ValueError("concurrency levels must be positive")
        return value

    @field_validator("url")
    @classmethod
    def _local(cls, value: str) -> str:
        local_address(value)
        return value


class ServedModel(BaseModel):
    """What a load test needs to know of the model, from the server's own config of it."""

    name: str
    input: str
    output: str
    dims: list[int]  # of one image, or of the whole static batch when max_batch is 0
    max_batch: int
    variant: str


def served_model(url: str, name: Optional[str]) -> tuple[ServedModel, str]:
    """The model and the server's name and version; one clear error when it is not reachable or unknown."""
    client = TritonClient(url, timeout=10)
    try:
        server = client.get("/v2")
        if name is None:
            ready = [m["name"] for m in client.post("/v2/repository/index") if m.get("state") == "READY"
                     and not m["name"].endswith((PREPROCESS_SUFFIX, IMAGES_SUFFIX))]  # --images' helpers take image files
            if len(ready) != 1:
                raise UsageError(f"{url} serves {len(ready)} models ({', '.join(ready) or 'none'}); name one with --model")
            name = ready[0]
        config = client.get(f"/v2/models/{name}/config")
    except RequestFailed as exc:
        hint = "is the server running (pe-export serve)?" if exc.status is None else "check --model"
        raise UsageError(f"cannot use {url}: {exc}; {hint}") from None
    finally:
        client.close()
    parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    model = ServedModel(name=name, input=config["input"][0]["name"], output=config["output"][0]["name"],
                        dims=[int(d) for d in config["input"][0]["dims"]], max_batch=config.get("max_batch_size", 0),
                        variant=parameters.get("pe_export.variant", name))
    return model, f"{server.get('name', 'server')} {server.get('version', '')} at {url}"


def request_batch(model: ServedModel, batch: int) -> np.ndarray:
    """Seeded inputs in the model's range [-1, 1]: `batch` images, or the model's static batch."""
    if model.max_batch and batch > model.max_batch:
        raise UsageError(f"--batch {batch} is more than {model.name} takes per request ({model.max_batch})")
    shape = [batch, *model.dims] if model.max_batch else model.dims
    return np.random.default_rng(INPUT_SEED).uniform(-1, 1, shape).astype(np.float32)


def run_level(url: str, model: ServedModel, inputs: np.ndarray, concurrency: int, seconds: float,
              stop: threading.Event) -> LoadRow:
    """`concurrency` closed-loop clients for `seconds` (or until `stop` is set)."""
    latencies: list[float] = []
    errors: list[str] = []
    deadline = [0.0]  # set once, when every client is warm
    start = threading.Barrier(concurrency + 1, action=lambda: deadline.__setitem__(0, time.perf_counter() + seconds))

    def client_loop() -> None:
        client = TritonClient(url)
        try:
            # warm-up: the connection and the first batch's allocations; a failure shows in the timed loop
            with contextlib.suppress(RequestFailed):
                client.infer(model.name, model.input, model.output, inputs)
            start.wait()
            while time.perf_counter() < deadline[0] and not stop.is_set():
                began = time.perf_counter()
                try:
                    client.infer(model.name, model.input, model.output, inputs)
                    latencies.append((time.perf_counter() - began) * 1e3)
                except RequestFailed as exc:
                    errors.append(str(exc))
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    start.wait()
    began = deadline[0] - seconds
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    return LoadRow(concurrency=concurrency, batch=len(inputs), seconds=round(elapsed, 3), requests=len(latencies),
                   errors=len(errors), first_error=errors[0] if errors else None,
                   latency_ms=summarize(latencies) if latencies else None,
                   throughput_ips=len(latencies) * len(inputs) / elapsed)


def run_loadtest(settings: LoadSettings, on_row: Callable[[LoadRow], None] = lambda row: None) -> Report:
    """Every concurrency level in turn; Ctrl-C keeps the finished levels (report.interrupted)."""
    model, server = served_model(settings.url, settings.model)
    inputs = request_batch(model, settings.batch)
    rows: list[LoadRow] = []
    stop = threading.Event()
    interrupted = False
    try:
        for concurrency in settings.concurrency:
            rows.append(run_level(settings.url, model, inputs, concurrency, settings.seconds, stop))
            on_row(rows[-1])
    except KeyboardInterrupt:
        stop.set()  # the clients finish their request in flight and end
        interrupted = True
    recorded = {**settings.model_dump(), "model": model.name, "batch": len(inputs), "input": model.input}
    return make_report("load", model.variant, server, {"pe-export": __version__}, recorded, rows, interrupted)
