"""Serving: `triton` (a model repository), `serve` (a Triton server here) and `loadtest` (a served
model under concurrent clients)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, get_args

import typer

from pe_export.cli.options import DEVICE, Choice, bench_sizes, csv, first_error, flag
from pe_export.cli.output import console, finish_report, progress_bar
from pe_export.errors import UsageError
from pe_export.serving import InstanceKind

if TYPE_CHECKING:
    from pe_export.serving.repository import ServingOptions

INSTANCE_KIND = Choice("instance kind", tuple(get_args(InstanceKind)))

ModelNameOpt = Annotated[Optional[str], typer.Option(help="Model name. Default: `<variant>-<precision>-<onnx|trt>`.")]
MaxBatchOpt = Annotated[Optional[int], typer.Option(help="Largest batch Triton forms. Default: the engine's profile maximum, 8 for ONNX.", min=1)]
PreferredOpt = Annotated[Optional[str], typer.Option(help="Preferred batch sizes of dynamic batching, e.g. 4,8. Default: the engine's opt and max.")]
QueueDelayOpt = Annotated[int, typer.Option(help="How long dynamic batching waits to fill a batch, in microseconds.", min=0)]
InstancesOpt = Annotated[int, typer.Option(help="Model instances.", min=1)]
ImagesOpt = Annotated[bool, flag("--images", help="Add `<name>_images`, an ensemble that takes one encoded image file "
                                 "(JPEG, PNG, ...) as a UINT8 tensor and preprocesses it exactly as at inference.")]


def _serving_options(name: Optional[str], max_batch: Optional[int], preferred: Optional[str], queue_delay_us: int,
                     kind: str, instances: int, tensorrt_accelerator: bool = False, images: bool = False) -> ServingOptions:
    from pydantic import ValidationError

    from pe_export.serving.repository import ServingOptions

    try:
        return ServingOptions(name=name, max_batch_size=max_batch, preferred_batch_sizes=bench_sizes(preferred) if preferred else [],
                              max_queue_delay_us=queue_delay_us, instance_kind=kind, instances=instances,
                              tensorrt_accelerator=tensorrt_accelerator, images=images)
    except ValidationError as exc:
        raise UsageError(f"bad serving options: {first_error(exc)}") from None


def triton(
    artifact: Annotated[Path, typer.Argument(help="An ONNX file (any precision) or a TensorRT engine made by pe-export.")],
    repository: Annotated[Path, typer.Option("--repository", "-r", help="The model repository folder.")] = Path("model_repository"),
    name: ModelNameOpt = None,
    max_batch: MaxBatchOpt = None,
    preferred: PreferredOpt = None,
    queue_delay_us: QueueDelayOpt = 100,
    kind: Annotated[str, INSTANCE_KIND.option(help="Where ONNX instances run (engines always run on the GPU).")] = "gpu",
    instances: InstancesOpt = 1,
    tensorrt_accelerator: Annotated[bool, flag("--tensorrt-accelerator", help="ONNX on GPU: let onnxruntime's TensorRT execution provider run it.")] = False,
    images: ImagesOpt = False,
) -> None:
    """Write a Triton Inference Server model repository for an artifact: config.pbtxt (inputs and
    outputs from the manifest, dynamic batching, instance groups, the variant and precision as
    parameters) and the model file as version 1.

    Example: pe-export triton artifacts/PE-Lang-L14-448/PE-Lang-L14-448.ort.int8.onnx --kind cpu -r models/
    """
    from pe_export.serving.repository import model_repository

    options = _serving_options(name, max_batch, preferred, queue_delay_us, kind, instances, tensorrt_accelerator, images)
    result = model_repository(artifact, repository, options,
                              progress=lambda line: console.print(line, highlight=False, soft_wrap=True))
    console.print(f"[green]{'kept' if result.reused else 'wrote'}[/] {result.model_dir}/ (config.pbtxt, version 1)"
                  + (f" and its {result.model_dir.name}_images ensemble (needs pe-export in Triton's Python)" if images else ""))
    console.print(result.text, highlight=False, markup=False)


def serve(
    artifact: Annotated[Path, typer.Argument(help="An ONNX file (any precision) or a TensorRT engine made by pe-export.")],
    variant: Annotated[Optional[str], typer.Option("--variant", "-v", help="Refuse an artifact made for another variant.")] = None,
    name: ModelNameOpt = None,
    http_port: Annotated[int, typer.Option(help="HTTP port (KServe v2 protocol, health at /v2/health/ready).", min=1, max=65535)] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.", min=1, max=65535)] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.", min=1, max=65535)] = 8002,
    device: Annotated[str, DEVICE.option(help="Where ONNX runs: onnxruntime on the CPU or on CUDA (engines always run on the GPU, with TensorRT).")] = "cpu",
    instances: InstancesOpt = 1,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads per model instance. Default: onnxruntime's (all cores).", min=1)] = None,
    max_batch: MaxBatchOpt = None,
    preferred: PreferredOpt = None,
    queue_delay_us: QueueDelayOpt = 100,
    images: ImagesOpt = False,
    tritonserver: Annotated[Optional[Path], typer.Option(help="A tritonserver binary (e.g. /opt/tritonserver/bin/tritonserver). Default: $TRITONSERVER, else the server nvidia-pytriton bundles.")] = None,
) -> None:
    """Serve an artifact on a real Triton Inference Server here, until Ctrl-C or SIGTERM.

    The model runs on Triton's python backend through pe-export's runners (the numbers `pe-export
    parity` checks), with dynamic batching; HTTP, gRPC and metrics on the given ports. Everything is
    checked before the server starts; stopping it leaves no process, file or shared memory behind.
    Triton: `pip install --no-deps nvidia-pytriton==0.7.0` (its numpy<2 pin concerns only its own
    Python API, which pe-export does not use) or any install via --tritonserver. For a Triton
    deployment elsewhere, `pe-export triton` writes the repository for its native backends.

    Example: pe-export serve artifacts/PE-Spatial-T16-512/PE-Spatial-T16-512.ort.onnx --max-batch 8
    """
    import signal
    import threading

    from pydantic import ValidationError

    from pe_export.serving.server import ServerSettings, running_server

    options = _serving_options(name, max_batch, preferred, queue_delay_us, "gpu" if device == "cuda" else "cpu", instances,
                               images=images)
    try:
        settings = ServerSettings(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, threads=threads)
    except ValidationError as exc:
        raise UsageError(f"bad server settings: {first_error(exc)}") from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.ExitStack() as running:
        with console.status("starting Triton and loading the model"):
            server = running.enter_context(running_server(artifact, options, settings, variant, tritonserver))
        console.print(f"[green]serving[/] {server.model} ({artifact.name}) on Triton; Ctrl-C or SIGTERM stops it")
        for what, url in server.urls.items():
            console.print(f"  {what:<8} {url}", highlight=False)
        console.print(f"  log      {server.log}", highlight=False)
        server.wait(stop)
    console.print("stopped", highlight=False)


def _levels(value: str) -> list[int]:
    parts = csv(value)
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise typer.BadParameter(f"{value!r}: concurrency levels are positive numbers, e.g. 1,4,16")
    return sorted({int(p) for p in parts})


def loadtest(
    url: Annotated[str, typer.Option(help="The server's HTTP address, on this machine.")] = "http://localhost:8000",
    model: Annotated[Optional[str], typer.Option(help="The model to load. Default: the server's only model.")] = None,
    concurrency: Annotated[str, typer.Option(help="Concurrent clients per level, e.g. 1,4,16.")] = "1,4,16",
    seconds: Annotated[float, typer.Option(help="Timed seconds per level.", min=0.1)] = 10.0,
    batch: Annotated[int, typer.Option(help="Images per request.", min=1)] = 1,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the report as JSON (schema pe-export/load/1).")] = None,
    md_path: Annotated[Optional[Path], typer.Option("--md", help="Write the report as a Markdown table.")] = None,
) -> None:
    """Load a served model as a serving team does: closed-loop clients per concurrency level.

    Per level: throughput (answered images per second), p50/p90/p99 latency of answered requests,
    and the errors; exit 1 when a request failed. Local servers only (localhost, 127.0.0.1, ::1).

    Example: pe-export loadtest --url http://localhost:8000 --concurrency 1,4,16 --seconds 10
    """
    from pydantic import ValidationError

    from pe_export.serving.loadtest import LoadSettings, run_loadtest

    try:
        settings = LoadSettings(url=url, model=model, concurrency=_levels(concurrency), seconds=seconds, batch=batch)
    except ValidationError as exc:
        raise UsageError(f"bad load test settings: {first_error(exc)}") from None
    with progress_bar() as bar:
        task = bar.add_task("concurrency levels", total=len(settings.concurrency))
        report = run_loadtest(settings, on_row=lambda row: bar.advance(task))
    finish_report(report, json_path, md_path)
    failed = sum(row.errors for row in report.results)  # type: ignore[union-attr]
    if failed:
        console.print(f"[red]{failed} request(s) failed[/]; first: {report.results[0].first_error}", highlight=False)
        raise typer.Exit(1)
