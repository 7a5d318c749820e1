"""The runner of a (backend, precision) pair: the torch model itself, or its artifact from the command's
plans, made on demand."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pe_export.model import LoadedModel
from pe_export.model.head import OutputHead
from pe_export.pipeline import Plan
from pe_export.precision.profiles import cpu_profile, resolve_profile
from pe_export.runners import BACKENDS, Runner, open_runner

if TYPE_CHECKING:
    from pe_export.bench.bench import BenchSettings

RunnerOpener = Callable[[str, str], Runner]


def runner_opener(loaded: LoadedModel, settings: BenchSettings,
                  progress: Callable[[str], None] = lambda step: None) -> RunnerOpener:
    """Runners over the artifacts of two plans that share one set of digests: the CPU runtimes' (the
    onnxruntime export, which OpenVINO's IR is converted from, and the ExecuTorch programs) and TensorRT's (the bench's profile, the
    variant's default without one, its batch range widened to the benchmarked batches: the engine
    `pe-export trt --profile` and `pe-export parity` use for that profile)."""
    cpu = Plan.of(loaded, cpu_profile(loaded.variant.name), progress)
    gpu = Plan.of(loaded, resolve_profile(settings.profile, loaded.variant), progress, cpu.digests)

    def open_pair(backend: str, precision: str) -> Runner:
        runtime = BACKENDS[backend].runtime
        if runtime == "torch":
            head = OutputHead(loaded.model, loaded.variant.default_output)
            return open_runner(head, backend=backend, precision=precision, device=settings.device)
        if runtime == "onnxruntime":
            return open_runner(cpu.precision(precision).path, backend=backend, threads=settings.threads)
        if runtime == "openvino":
            return open_runner(cpu.ir(precision).path, backend=backend, threads=settings.threads)
        if runtime == "executorch":
            return open_runner(cpu.program(precision).path, backend=backend, threads=settings.threads)
        return open_runner(engine_artifact(gpu, precision, settings.batches), backend=backend,
                           cuda_graph=settings.cuda_graph)

    return open_pair


def engine_artifact(plan: Plan, precision: str, batches: list[int]) -> Path:
    """The engine file of a precision whose batch range covers `batches`, from the plan's profile."""
    from pe_export.trt.engine import covering_settings, require_gpu_for

    gpu = require_gpu_for(precision)
    return plan.engine(precision, covering_settings(plan.profile, precision, batches), gpu=gpu).path
