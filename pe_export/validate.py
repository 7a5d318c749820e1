"""What every stage proves itself with: seeded inputs, error statistics against a reference, and
the parity row of one artifact run against the torch fp32 outputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from pe_export.manifests import EngineManifest, GraphManifest, read_manifest
from pe_export.errors import UsageError
from pe_export.precisions import get_precision
from pe_export.report import ParityRow
from pe_export.runners import ARTIFACT_SUFFIXES, BACKENDS, default_backend, open_runner
from pe_export.variants import Variant, get_variant

if TYPE_CHECKING:
    import torch

# One seed per purpose, so the inputs that prove an export, score an artifact and time a runner
# stay apart from each other (and from calibration data, see precision.calibration).
EXPORT_SEED = 0
PARITY_SEED = 1
BENCH_SEED = 2
CHUNK = 4  # images per run when scoring an artifact: bounded memory on large variants


# ---- error statistics -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ParityFigures:
    """Token-wise cosine (rows along the last axis), absolute and relative errors."""

    cosine_mean: float
    cosine_min: float
    max_abs: float
    max_rel: float  # max |difference| / max |reference|
    rel_l2: float  # ||difference|| / ||reference||

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"cosine min {self.cosine_min:.7f} (mean {self.cosine_mean:.7f}), max abs {self.max_abs:.3g}, "
            f"max rel {self.max_rel:.3g}, rel L2 {self.rel_l2:.3g}"
        )


def compare(reference: np.ndarray, candidate: np.ndarray) -> ParityFigures:
    """Compare two outputs of the same shape; computed in float64."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    ref_rows = ref.reshape(-1, ref.shape[-1])
    cand_rows = cand.reshape(-1, cand.shape[-1])
    norms = np.linalg.norm(ref_rows, axis=1) * np.linalg.norm(cand_rows, axis=1)
    dots = np.einsum("ij,ij->i", ref_rows, cand_rows)
    both_zero = norms == 0
    cosines = np.where(both_zero, 1.0, dots / np.where(both_zero, 1.0, norms))
    diff = cand - ref
    ref_max = np.abs(ref).max()
    ref_l2 = np.linalg.norm(ref)
    return ParityFigures(
        cosine_mean=float(cosines.mean()),
        cosine_min=float(cosines.min()),
        max_abs=float(np.abs(diff).max()),
        max_rel=float(np.abs(diff).max() / ref_max) if ref_max else float(np.abs(diff).max()),
        rel_l2=float(np.linalg.norm(diff) / ref_l2) if ref_l2 else float(np.linalg.norm(diff)),
    )


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


# ---- inputs ---------------------------------------------------------------------------------------

def seeded_batch(variant: Variant, count: int, seed: int) -> np.ndarray:
    """`count` inputs in the model's input range [-1, 1], the same on every machine for a seed."""
    import torch

    size = variant.image_size
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(count, 3, size, size, generator=gen) * 2 - 1).numpy()


@dataclass(frozen=True)
class ParityInputs:
    batch: np.ndarray  # (N, 3, S, S) float32
    names: list[str]
    real_images: bool


def synthetic_inputs(variant: Variant, count: int, seed: int = PARITY_SEED) -> ParityInputs:
    batch = seeded_batch(variant, count, seed)
    return ParityInputs(batch, [f"synthetic-{i}" for i in range(count)], real_images=False)


# ---- artifact files ----------------------------------------------------------------------------------

def read_onnx(path: Path) -> onnx.ModelProto:
    """The graph of an ONNX file, its weights left on disk; one clear error when it is no usable model."""
    if not path.is_file():
        raise UsageError(f"ONNX file not found: {path}")
    if path.stat().st_size == 0:
        raise UsageError(f"{path} is empty (0 bytes); make it again with `pe-export onnx` or `pe-export quantize`")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types on garbage
        raise UsageError(f"cannot read {path} as ONNX ({type(exc).__name__}): is it truncated or another kind of file?") from None
    if not model.graph.node:
        raise UsageError(f"{path} holds no graph (0 nodes); make it again with `pe-export onnx`")
    return model


def missing_external_data(model: onnx.ModelProto, path: Path) -> list[tuple[str, str]]:
    """(tensor, problem) for every initializer whose external data file is missing or too short."""
    problems = []
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        file = path.parent / info.get("location", "")
        needed = int(info.get("offset", 0)) + int(info.get("length", 0))
        if not file.is_file():
            problems.append((tensor.name, f"external data file {file.name} is missing"))
        elif file.stat().st_size < needed:
            problems.append((tensor.name, f"external data file {file.name} is shorter than its tensors need"))
    return problems


def artifact_manifest(artifact: Path, variant: str | None = None) -> GraphManifest:
    """The manifest of an artifact pe-export made, checked (for `variant` when one is named) before any
    weights load: what serving and embedding start from."""
    manifest = read_manifest(artifact) if artifact.is_file() else None
    if not isinstance(manifest, GraphManifest):
        raise UsageError(f"{artifact} has no manifest beside it; make artifacts with pe-export onnx, quantize, trt "
                         "or openvino")
    check_artifact(artifact, get_variant(variant or manifest.variant))
    return manifest


def check_artifact(path: Path, variant: Variant) -> None:
    """Refuse, before any weights are loaded, an artifact that cannot be scored for this variant."""
    if path.suffix not in ARTIFACT_SUFFIXES:
        raise UsageError(f"unknown artifact type {path.suffix!r} ({path}); expected {', '.join(ARTIFACT_SUFFIXES)}")
    if not path.is_file():
        raise UsageError(f"artifact not found: {path}")
    manifest = read_manifest(path)
    made_for = manifest.variant if manifest else variant.name
    if made_for != variant.name:
        raise UsageError(f"{path.name} was made for {made_for}, not {variant.name}; pass --variant {made_for}")
    if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
        raise UsageError(f"{path.name}: its weights {path.with_suffix('.bin').name} are missing; "
                         "copy them beside it or convert again with `pe-export openvino`")
    if path.suffix != ".onnx":
        if path.stat().st_size == 0:
            raise UsageError(f"{path} is empty (0 bytes); make it again with pe-export")
        return
    model = read_onnx(path)
    missing = missing_external_data(model, path)
    if missing:
        raise UsageError(f"{path.name}: {missing[0][1]} ({len(missing)} tensors lack their data); "
                         "copy it beside the model or make the model again")
    dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    expected = [3, variant.image_size, variant.image_size]
    if dims[1:] != expected:
        raise UsageError(f"{path.name} takes input {dims}, {variant.name} images are {expected}: "
                         "is it for another variant?")


# ---- running and scoring --------------------------------------------------------------------------

def run_in_chunks(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """Run a batch `chunk` images at a time; a short last chunk is padded (for static-batch artifacts)."""
    outputs = []
    for start in range(0, len(batch), chunk):
        part = batch[start:start + chunk]
        pad = chunk - len(part)
        if pad:
            part = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)])
        outputs.append(run(part)[: chunk - pad])
    return np.concatenate(outputs)


def _chunk(manifest: GraphManifest | None, chunk: int) -> int:
    """Images per run for an artifact: its static batch, or `chunk` brought inside an engine's batch range."""
    static = manifest.options.get("batch") if isinstance(manifest, GraphManifest) else None
    if isinstance(static, int):
        return static
    settings = manifest.settings if isinstance(manifest, EngineManifest) else {}  # the optimization profile's range
    return min(max(chunk, settings.get("batch_min", 1)), settings.get("batch_max", chunk))


def reference_outputs(module: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    """The torch fp32 outputs that artifacts are scored against."""
    import torch

    with torch.no_grad():
        return run_in_chunks(lambda x: module(torch.from_numpy(x)).numpy(), batch)


def artifact_parity(path: Path, reference: np.ndarray, inputs: ParityInputs, threshold: float | None = None,
                    threads: int | None = None, backend: str | None = None, chunk: int = CHUNK,
                    precision: str | None = None) -> ParityRow:
    """One artifact run on `inputs` (on `backend`, by default the one for its file type), `chunk` images
    at a time unless its batch is static, and scored against the reference outputs for them.

    The gate is the token cosine mean against `threshold` (default: the precision's). The precision
    is the manifest's unless given (an artifact whose manifest is not written yet).
    """
    manifest = read_manifest(path)
    spec = get_precision(precision or (manifest.precision if manifest else "fp32"))
    threshold = spec.threshold if threshold is None else threshold
    chosen = BACKENDS[backend] if backend else default_backend(path)
    if not chosen.runs(spec.name):
        return ParityRow(artifact=path.name, backend=chosen.name, precision=spec.name, cosine_mean=None,
                         cosine_min=None, max_abs=None, rel_l2=None, threshold=threshold, passed=None,
                         note=f"{spec.name} cannot run on {chosen.runtime} {'GPU' if chosen.gpu else 'CPU'}")
    with open_runner(path, backend=chosen.name, threads=threads, precision=spec.name) as runner:
        candidate = run_in_chunks(runner.run, inputs.batch, _chunk(manifest, chunk))
    if candidate.shape != reference.shape:
        raise UsageError(f"{path.name} gives {candidate.shape}, the torch reference {reference.shape}: is it for this variant?")
    figures = compare(reference, candidate)
    ref_pooled, cand_pooled = pooled_features(reference), pooled_features(candidate)
    top1 = retrieval_agreement(ref_pooled, cand_pooled) if inputs.real_images and len(inputs.names) >= 3 else None
    return ParityRow(
        artifact=path.name, backend=chosen.name, precision=spec.name, cosine_mean=figures.cosine_mean,
        cosine_min=figures.cosine_min, max_abs=figures.max_abs, rel_l2=figures.rel_l2, threshold=threshold,
        passed=figures.cosine_mean >= threshold, pooled_cosine=compare(ref_pooled, cand_pooled).cosine_mean,
        retrieval_top1=top1,
    )
