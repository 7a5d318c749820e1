"""PE to ONNX at the variant's native size, lowered for a target runtime and proven before it is kept."""

from __future__ import annotations

import collections
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnx
import torch
from pydantic import BaseModel, ConfigDict, Field

from pe_export import artifacts
from pe_export.errors import CheckFailed, UsageError
from pe_export.memory import free_weights, release_memory
from pe_export.model import LoadedModel, ModelSource, load_source
from pe_export.model.head import OutputHead, check_output
from pe_export.onnx import passes
from pe_export.onnx.lowering import FUSED_MIN_OPSET, translation_table
from pe_export.onnx.targets import DEFAULT_TARGET, Lowering, Target, get_target
from pe_export.quiet import quiet
from pe_export.runners.onnxruntime import OrtRunner
from pe_export.validate import EXPORT_SEED, compare, seeded_batch
from pe_export.variants import OutputKind, Variant, get_variant
from pe_export.versions import versions

INPUT_NAME = "pixel_values"
MIN_OPSET = 17
EXPORTER_OPSET = 18  # torch's exporter builds at 18 and up; lower opsets are converted after our passes
# Past this, weights are streamed to `<file>.onnx.data` beside the graph. Protobuf caps a single
# file at 2 GB, and a single-file save holds two extra copies of the weights in memory (the proto
# and its serialized bytes): for L14 that is 4.8 GB peak instead of 1.5 GB.
EXTERNAL_DATA_BYTES = 512 * 2**20


class ExportOptions(BaseModel):
    """What the user asks for; `None` means the target's (or the variant's) default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: str = DEFAULT_TARGET
    opset: Optional[int] = None
    rope: Optional[Lowering] = None
    attention: Optional[Lowering] = None
    batch: Optional[int] = Field(None, ge=1, description="static batch size; None exports a dynamic batch")
    output: Optional[OutputKind] = None
    layer: int = -1
    strip_cls: bool = False
    simplify: bool = False
    min_cosine: float = 0.99999
    max_abs: float = 1e-4


@dataclass(frozen=True)
class ResolvedExport:
    """Every choice made concrete for one variant; what the manifest records."""

    target: Target
    opset: int
    rope: Lowering
    attention: Lowering
    batch: int | None
    output: OutputKind
    layer: int
    strip_cls: bool
    simplify: bool
    min_cosine: float
    max_abs: float

    @property
    def output_name(self) -> str:
        return self.output

    def as_dict(self) -> dict:
        return {
            "target": self.target.name, "opset": self.opset, "rope": self.rope, "attention": self.attention,
            "batch": self.batch if self.batch else "dynamic", "output": self.output, "layer": self.layer,
            "strip_cls": self.strip_cls, "simplify": self.simplify,
            "parity_threshold": {"min_cosine": self.min_cosine, "max_abs": self.max_abs},
        }

    def file_stem(self, variant_name: str) -> str:
        """`<variant>.<target>` plus a tag for each choice that departs from the target's defaults."""
        t = self.target
        tags = [
            f"op{self.opset}" if self.opset != t.opset else "",
            f"rope-{self.rope}" if self.rope != t.rope else "",
            f"attn-{self.attention}" if self.attention != t.attention else "",
            self.output if self.output != "tokens" else "",
            f"layer{self.layer}" if self.layer != -1 else "",
            "nocls" if self.strip_cls else "",
            f"b{self.batch}" if self.batch else "",
        ]
        return ".".join([variant_name, t.name, *filter(None, tags)])


def resolve(options: ExportOptions, variant: Variant) -> ResolvedExport:
    target = get_target(options.target)
    rope = options.rope or target.rope
    attention = options.attention or target.attention
    opset = options.opset or target.opset
    fused = [f"--{name} fused" for name, mode in (("rope", rope), ("attention", attention)) if mode == "fused"]
    if opset < MIN_OPSET:
        raise UsageError(f"opset {opset} is below the lowest supported ({MIN_OPSET})")
    if fused and opset < FUSED_MIN_OPSET:
        raise UsageError(
            f"{' and '.join(fused)} needs opset {FUSED_MIN_OPSET} or higher, not {opset}; "
            "use --rope decomposed --attention decomposed, or --opset 23"
        )
    output = options.output or variant.default_output
    check_output(variant, output, options.layer, options.strip_cls)
    return ResolvedExport(
        target, opset, rope, attention, options.batch, output, options.layer, options.strip_cls,
        options.simplify, options.min_cosine, options.max_abs,
    )


@dataclass(frozen=True)
class ExportResult:
    path: Path
    manifest_path: Path
    manifest: dict


def default_output_path(variant: Variant, spec: ResolvedExport, root: Path = artifacts.ROOT) -> Path:
    return root / variant.name / f"{spec.file_stem(variant.name)}.onnx"


def export_input(variant: Variant, batch: int) -> torch.Tensor:
    """The seeded batch that traces the graph and proves the export."""
    return torch.from_numpy(seeded_batch(variant, batch, EXPORT_SEED))


def export_variant(
    source: ModelSource,
    *,
    options: ExportOptions = ExportOptions(),
    output: Path | None = None,
    progress: Callable[[str], None] = lambda step: None,
) -> ExportResult:
    """Load the source's weights and export them; options and the output path are checked before loading."""
    variant = get_variant(source.variant)
    spec = resolve(options, variant)
    path = Path(output) if output else default_output_path(variant, spec)
    artifacts.prepare_destination(path)
    # The weights are loaded inside the export, so it holds the only reference and can free them
    # before onnxruntime loads its own copy (a model passed in as an argument stays alive until the
    # call returns).
    def load() -> LoadedModel:
        progress("loading weights")
        return load_source(source)

    return _export(load, options, path, progress, owns_weights=True)


def export_onnx(
    loaded: LoadedModel,
    options: ExportOptions = ExportOptions(),
    output: Path | None = None,
    progress: Callable[[str], None] = lambda step: None,
) -> ExportResult:
    """Export, check, prove and write `output` (default under artifacts/<variant>/) with its manifest.

    The file only appears at `output` once the full ONNX check and the onnxruntime parity run
    against the torch model have passed; otherwise the previous file (or nothing) stays.
    """
    return _export(lambda: loaded, options, output, progress, owns_weights=False)


def _export(load: Callable[[], LoadedModel], options: ExportOptions, output: Path | None,
            progress: Callable[[str], None], owns_weights: bool) -> ExportResult:
    loaded = load()
    variant, source = loaded.variant, loaded.source
    spec = resolve(options, variant)
    key = export_key(loaded, spec)
    path = Path(output) if output else default_output_path(variant, spec)
    artifacts.prepare_destination(path)
    if any(p.dtype != torch.float32 for p in loaded.model.parameters()):
        raise UsageError("export starts from fp32 weights; load the model with dtype=torch.float32")
    start = time.perf_counter()
    head = OutputHead(loaded.model, spec.output, spec.layer, spec.strip_cls).eval()
    progress("computing torch reference outputs")
    references = _references(head, variant, spec)
    with artifacts.staging(path) as scratch:
        staged = scratch / path.name
        progress(f"tracing {variant.name} and writing ONNX (opset {spec.opset})")
        external = _save_onnx(head, variant, spec, staged)
        if owns_weights:  # export_variant, the CLI: onnxruntime's copy replaces the torch weights
            free_weights(head)
        del head, loaded
        release_memory()
        progress("checking the graph (onnx.checker, full)")
        onnx.checker.check_model(str(staged), full_check=True)
        if spec.simplify:
            progress("simplifying with onnxslim")
        simplified = _simplify(staged) if spec.simplify else None
        progress("proving parity: onnxruntime CPU against torch")
        figures = _prove(references, spec, staged)
        graph = onnx.load(str(staged), load_external_data=False)
        model_files = [staged, *([scratch / f"{path.name}.data"] if external else [])]
        manifest = _manifest(variant, source, spec, graph, figures, simplified, external, time.perf_counter() - start)
        manifest["key"] = key
        manifest["files"] = artifacts.file_digests(model_files)
        manifest_file = scratch / artifacts.manifest_path(path).name
        artifacts.write_json(manifest_file, manifest)
        # companions (external data, manifest) move first, so a model file never lacks them
        artifacts.publish([*model_files, manifest_file], path)
    return ExportResult(path, artifacts.manifest_path(path), manifest)


def ensure_onnx(
    loaded: LoadedModel,
    options: ExportOptions = ExportOptions(),
    output: Path | None = None,
    progress: Callable[[str], None] = lambda step: None,
) -> ExportResult:
    """The fp32 ONNX for these weights and options: reused when its manifest matches, else exported."""
    path, manifest = _reusable(loaded, options, output, progress)
    if manifest is not None:
        return ExportResult(path, artifacts.manifest_path(path), manifest)
    return export_onnx(loaded, options, path, progress)


def ensure_onnx_freeing(loaded: LoadedModel, options: ExportOptions = ExportOptions(),
                        progress: Callable[[str], None] = lambda step: None) -> tuple[ExportResult, bool]:
    """`ensure_onnx` for a caller that can load the weights again: an export frees them before
    onnxruntime loads its copy (L14: 2.0 GiB peak instead of 3.1). Returns the ONNX and whether the
    weights were freed (then the caller must load them again)."""
    path, manifest = _reusable(loaded, options, None, progress)
    if manifest is not None:
        return ExportResult(path, artifacts.manifest_path(path), manifest), False
    return _export(lambda: loaded, options, path, progress, owns_weights=True), True


def _reusable(loaded: LoadedModel, options: ExportOptions, output: Path | None,
              progress: Callable[[str], None]) -> tuple[Path, dict | None]:
    spec = resolve(options, loaded.variant)
    path = Path(output) if output else default_output_path(loaded.variant, spec)
    return path, artifacts.reuse(path, export_key(loaded, spec), progress, remake="exporting")


def export_key(loaded: LoadedModel, spec: ResolvedExport) -> dict:
    """Everything an export depends on: the weights and every option."""
    return {"kind": "onnx", "variant": loaded.variant.name,
            "weights": {"sha256": loaded.source.sha256, "seed": loaded.source.seed}, "options": spec.as_dict()}


def _references(head: OutputHead, variant: Variant, spec: ResolvedExport) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Inputs and torch outputs for each parity batch size: a static batch, or 1 and 2 for a dynamic one."""
    references = {}
    for batch in [spec.batch] if spec.batch else [1, 2]:
        x = export_input(variant, batch)
        with torch.no_grad():
            references[batch] = (x.numpy(), head(x).numpy())
    return references


def _save_onnx(head: OutputHead, variant: Variant, spec: ResolvedExport, staged: Path) -> bool:
    example = export_input(variant, spec.batch or 2)  # batch 2 keeps the dynamic dim from specializing to 1
    dynamic = None if spec.batch else {"pixel_values": {0: torch.export.Dim("batch", min=1, max=4096)}}
    with torch.no_grad(), quiet("torch.onnx"):
        program = torch.onnx.export(
            head, (example,), dynamo=True, opset_version=max(spec.opset, EXPORTER_OPSET), dynamic_shapes=dynamic,
            input_names=[INPUT_NAME], output_names=[spec.output_name], optimize=True, verbose=False,
            custom_translation_table=translation_table(spec.rope, spec.attention),
        )
    passes.finish(program.model, spec.opset)
    weight_bytes = sum(p.numel() * p.element_size() for p in head.parameters())
    external = weight_bytes > EXTERNAL_DATA_BYTES
    program.save(staged, external_data=external)
    # The exporter's graph outlives this call (onnxscript's rewrite rules keep the last graph they
    # matched), and its folded initializers are views of the torch weights: unhook them.
    for value in program.model.graph.initializers.values():
        value.const_value = None
    return external


def _simplify(staged: Path) -> dict:
    """onnxslim, kept only when it leaves fewer nodes; parity is proven afterwards either way."""
    import onnxslim

    before = onnx.load(str(staged), load_external_data=False)
    nodes_before = len(before.graph.node)
    slim = onnxslim.slim(str(staged))
    nodes_after = len(slim.graph.node)
    if nodes_after < nodes_before:
        _save_like(slim, staged, external=_uses_external_data(before))
    return {"tool": "onnxslim", "nodes_before": nodes_before, "nodes_after": min(nodes_before, nodes_after)}


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)


def _save_like(model: onnx.ModelProto, staged: Path, external: bool) -> None:
    data = staged.with_name(staged.name + ".data")
    if data.exists():
        data.unlink()
    onnx.save(model, str(staged), save_as_external_data=external, location=data.name if external else None,
              all_tensors_to_one_file=True)


def _prove(references: dict[int, tuple[np.ndarray, np.ndarray]], spec: ResolvedExport, staged: Path) -> dict:
    """onnxruntime CPU against the torch outputs; a miss stops the export with the figures."""
    runner = OrtRunner(staged)
    results = {}
    for batch, (x, reference) in references.items():
        figures = compare(reference, runner.run(x))
        results[f"batch{batch}"] = figures
        if figures.cosine_min < spec.min_cosine or figures.max_abs > spec.max_abs:
            raise CheckFailed(
                f"ONNX output differs from torch at batch {batch}: {figures.summary()} "
                f"(needs cosine >= {spec.min_cosine}, max abs <= {spec.max_abs}); nothing was written"
            )
    worst = min(results.values(), key=lambda f: f.cosine_min)
    return {"backend": "onnxruntime CPU", "seed": EXPORT_SEED, "batches": list(references), **worst.as_dict(),
            "per_batch": {k: v.as_dict() for k, v in results.items()}}


def _manifest(variant, source, spec, graph, figures, simplified, external, seconds) -> dict:
    histogram = collections.Counter(
        f"{node.domain}::{node.op_type}" if node.domain else node.op_type for node in graph.graph.node
    )
    return {
        "kind": "onnx",
        "variant": variant.name,
        "precision": "fp32",
        "weights": source.as_dict(),
        "options": spec.as_dict(),
        "opset": {imp.domain or "ai.onnx": imp.version for imp in graph.opset_import},
        "nodes": len(graph.graph.node),
        "op_histogram": dict(histogram.most_common()),
        "inputs": _io(graph.graph.input),
        "outputs": _io(graph.graph.output),
        "external_data": external,
        "simplify": simplified,
        "parity": figures,
        "export_seconds": round(seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "versions": versions(),
    }


def _io(values) -> list[dict]:
    return [
        {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
         "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]}
        for v in values
    ]
