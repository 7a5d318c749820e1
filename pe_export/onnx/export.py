"""PE to ONNX at the variant's native size, lowered for a target runtime and proven before it is kept."""

from __future__ import annotations

import collections
import resource
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from pe_export import artifacts
from pe_export.artifacts import Digests
from pe_export.errors import CheckFailed, UsageError
from pe_export.manifests import ExportManifest, Weights, manifest_path, seal, write_manifest
from pe_export.memory import free_weights, release_memory
from pe_export.model import LoadedModel, ModelSource, load_source
from pe_export.model.head import OutputHead
from pe_export.onnx import passes
from pe_export.onnx.lowering import translation_table
from pe_export.onnx.spec import (EXPORTER_OPSET, EXTERNAL_DATA_BYTES, INPUT_NAME, ExportOptions, ExportResult,
                                 ResolvedExport, default_output_path, export_key, resolve)
from pe_export.quiet import quiet
from pe_export.runners.onnxruntime import OrtRunner
from pe_export.validate import EXPORT_SEED, compare, seeded_batch
from pe_export.variants import Variant, get_variant
from pe_export.versions import versions

__all__ = ["EXTERNAL_DATA_BYTES", "INPUT_NAME", "ExportOptions", "ExportResult", "export_onnx", "export_variant"]


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
    progress("loading weights")
    # handed over as the only reference, so that the export frees them before onnxruntime loads its copy
    return export_onnx(load_source(source), options, path, progress, owns_weights=True)


def export_onnx(
    loaded: LoadedModel,
    options: ExportOptions = ExportOptions(),
    output: Path | None = None,
    progress: Callable[[str], None] = lambda step: None,
    digests: Digests | None = None,
    owns_weights: bool = False,
) -> ExportResult:
    """Export, check, prove and write `output` (default under artifacts/<variant>/) with its manifest.

    The file only appears at `output` once the full ONNX check and the onnxruntime parity run
    against the torch model have passed; otherwise the previous file (or nothing) stays. With
    `owns_weights` the caller hands its weights over: they are freed (unusable afterwards) before
    onnxruntime loads its own copy (L14: 2.0 GiB peak instead of 3.1).
    """
    digests = digests or Digests()
    variant, source = loaded.variant, loaded.source
    spec = resolve(options, variant)
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
        if owns_weights:
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
        fields = _manifest(variant, source, spec, graph, figures, simplified, external, time.perf_counter() - start)
        manifest = ExportManifest(**seal(fields, export_key(variant, source, spec), digests.files(model_files)))
        manifest_file = scratch / manifest_path(path).name
        write_manifest(manifest_file, manifest)
        # companions (external data, manifest) move first, so a model file never lacks them
        artifacts.publish([*model_files, manifest_file], path)
    return ExportResult(path, manifest)


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
        "variant": variant.name,
        "weights": Weights(**source.as_dict()),
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
