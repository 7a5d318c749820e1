"""Accuracy parity: every artifact against the torch fp32 reference on the same inputs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pe_export.bench.metrics import compare
from pe_export.bench.report import ParityRow, Report, make_report
from pe_export.errors import UsageError
from pe_export.model import LoadedModel
from pe_export.model.head import OutputHead
from pe_export.model.preprocess import IMAGE_SUFFIXES, preprocess_batch
from pe_export.runners.device import cpu_name
from pe_export.versions import versions

# Minimum token cosine (mean over tokens) per precision, unless a profile says otherwise.
DEFAULT_THRESHOLDS = {"fp32": 0.99999, "fp16": 0.999, "bf16": 0.99, "int8": 0.99, "fp8": 0.99}
CHUNK = 4


@dataclass(frozen=True)
class ParityInputs:
    batch: np.ndarray  # (N, 3, S, S) float32
    names: list[str]
    real_images: bool


def synthetic_inputs(loaded: LoadedModel, count: int, seed: int = 1) -> ParityInputs:
    """Seeded inputs in [-1, 1]; seed 1 keeps them apart from the export's own proof batch (seed 0)."""
    size = loaded.variant.image_size
    gen = torch.Generator().manual_seed(seed)
    batch = (torch.rand(count, 3, size, size, generator=gen) * 2 - 1).numpy()
    return ParityInputs(batch, [f"synthetic-{i}" for i in range(count)], real_images=False)


def image_inputs(loaded: LoadedModel, folder: Path) -> ParityInputs:
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if Path(folder).is_dir() else []
    if not files:
        raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    batch = preprocess_batch(files, loaded.variant.image_size).numpy()
    return ParityInputs(batch, [p.name for p in files], real_images=True)


def artifact_manifest(path: Path) -> dict:
    manifest = path.with_name(path.name + ".json")
    return json.loads(manifest.read_text()) if manifest.is_file() else {}


def open_artifact(path: Path, manifest: dict, threads: int | None = None):
    """The runner for an artifact, by its file type."""
    if not path.is_file():
        raise UsageError(f"artifact not found: {path}")
    precision = manifest.get("precision", "fp32")
    if path.suffix == ".onnx":
        from pe_export.runners.onnxruntime import OrtRunner

        return OrtRunner(path, threads=threads, precision=precision)
    if path.suffix in (".engine", ".plan"):
        from pe_export.runners.tensorrt import TrtRunner

        return TrtRunner(path, precision=precision)
    raise UsageError(f"unknown artifact type {path.suffix!r} ({path}); expected .onnx, .engine or .plan")


def run_in_chunks(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, chunk: int) -> np.ndarray:
    """Run a batch `chunk` images at a time; a short last chunk is padded (for static-batch artifacts)."""
    outputs = []
    for start in range(0, len(batch), chunk):
        part = batch[start:start + chunk]
        pad = chunk - len(part)
        if pad:
            part = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)])
        outputs.append(run(part)[: chunk - pad])
    return np.concatenate(outputs)


def retrieval_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Share of images whose nearest neighbour among the others is the same by both feature sets."""
    def neighbours(features: np.ndarray) -> np.ndarray:
        unit = features / np.linalg.norm(features, axis=1, keepdims=True)
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        return similarity.argmax(axis=1)

    return float((neighbours(reference) == neighbours(candidate)).mean())


def pooled_features(output: np.ndarray) -> np.ndarray:
    """One vector per image: the embedding itself, or the mean over tokens."""
    return output if output.ndim == 2 else output.mean(axis=1)


def parity_rows(
    loaded: LoadedModel,
    artifacts: Sequence[Path],
    inputs: ParityInputs,
    thresholds: dict[str, float] | None = None,
    threads: int | None = None,
    on_row: Callable[[ParityRow], None] = lambda row: None,
) -> Iterator[ParityRow]:
    """One row per artifact; the torch reference is computed once per output kind."""
    thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    references: dict[tuple, np.ndarray] = {}
    for path in map(Path, artifacts):
        manifest = artifact_manifest(path)
        options = manifest.get("options", {})
        precision = manifest.get("precision", "fp32")
        head_key = (options.get("output", loaded.variant.default_output), options.get("layer", -1), options.get("strip_cls", False))
        if head_key not in references:
            head = OutputHead(loaded.model, *head_key).eval()
            with torch.no_grad():
                references[head_key] = run_in_chunks(lambda x: head(torch.from_numpy(x)).numpy(), inputs.batch, CHUNK)
        row = _artifact_row(path, manifest, precision, references[head_key], inputs, thresholds[precision], threads)
        on_row(row)
        yield row


def _artifact_row(path, manifest, precision, reference, inputs, threshold, threads) -> ParityRow:
    if path.suffix == ".onnx" and precision == "bf16":
        return ParityRow(artifact=path.name, backend="onnxruntime", precision=precision, cosine_mean=None,
                         cosine_min=None, max_abs=None, rel_l2=None, threshold=threshold, passed=None,
                         note="bf16 cannot run on onnxruntime CPU")
    with open_artifact(path, manifest, threads) as runner:
        static = manifest.get("options", {}).get("batch")
        chunk = static if isinstance(static, int) else CHUNK
        candidate = run_in_chunks(runner.run, inputs.batch, chunk)
        backend = runner.backend
    if candidate.shape != reference.shape:
        raise UsageError(f"{path.name} gives {candidate.shape}, the torch reference {reference.shape}: is it for this variant?")
    figures = compare(reference, candidate)
    ref_pooled, cand_pooled = pooled_features(reference), pooled_features(candidate)
    pooled = compare(ref_pooled, cand_pooled)
    top1 = (retrieval_agreement(ref_pooled, cand_pooled)
            if inputs.real_images and len(inputs.names) >= 3 else None)
    return ParityRow(
        artifact=path.name, backend=backend, precision=precision, cosine_mean=figures.cosine_mean,
        cosine_min=figures.cosine_min, max_abs=figures.max_abs, rel_l2=figures.rel_l2, threshold=threshold,
        passed=figures.cosine_mean >= threshold, pooled_cosine=pooled.cosine_mean, retrieval_top1=top1,
    )


def parity_report(loaded: LoadedModel, rows: list[ParityRow], inputs: ParityInputs, interrupted: bool = False) -> Report:
    settings = {"inputs": "images" if inputs.real_images else "synthetic", "count": len(inputs.names),
                "reference": "torch eager fp32 (CPU)", "weights": loaded.source.as_dict(),
                "gate": "cosine_mean >= threshold"}
    return make_report("parity", loaded.variant.name, cpu_name(), versions(), settings, rows, interrupted)


def default_artifacts(variant_name: str, root: Path = Path("artifacts")) -> list[Path]:
    """Every artifact with a manifest under artifacts/<variant>/."""
    folder = root / variant_name
    found = sorted(p for p in folder.glob("*") if p.suffix in (".onnx", ".engine", ".plan") and artifact_manifest(p))
    if not found:
        raise UsageError(f"no artifacts given and none under {folder}; export one with `pe-export onnx` or name files")
    return found


def run_parity(
    loaded: LoadedModel,
    artifacts: Sequence[Path] = (),
    images: Path | None = None,
    synthetic: int = 8,
    thresholds: dict[str, float] | None = None,
    threads: int | None = None,
    on_row: Callable[[ParityRow], None] = lambda row: None,
) -> Report:
    """Parity of each artifact (default: all under artifacts/<variant>/); Ctrl-C keeps the finished rows."""
    paths = list(artifacts) or default_artifacts(loaded.variant.name)
    inputs = image_inputs(loaded, images) if images else synthetic_inputs(loaded, synthetic)
    rows: list[ParityRow] = []
    try:
        for row in parity_rows(loaded, paths, inputs, thresholds, threads, on_row):
            rows.append(row)
    except KeyboardInterrupt:
        return parity_report(loaded, rows, inputs, interrupted=True)
    return parity_report(loaded, rows, inputs)
