"""`pe-export parity`: every artifact against the torch fp32 reference on the same inputs."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from pe_export import artifacts as artifact_files
from pe_export.manifests import GraphManifest, manifest_path, read_manifest
from pe_export.errors import UsageError
from pe_export.model import LoadedModel, ModelSource, load_source
from pe_export.model.head import OutputHead
from pe_export.images import IMAGE_SUFFIXES
from pe_export.model.preprocess import preprocess_batch
from pe_export.report import ParityRow, Report, make_report
from pe_export.runners import ARTIFACT_SUFFIXES, Backend, default_backend, get_backends
from pe_export.runners.device import cpu_name
from pe_export.validate import ParityInputs, artifact_parity, check_artifact, reference_outputs, synthetic_inputs
from pe_export.variants import Variant, get_variant
from pe_export.versions import versions


def image_inputs(variant: Variant, folder: Path) -> ParityInputs:
    """Every image in a folder, preprocessed exactly as at inference."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if Path(folder).is_dir() else []
    if not files:
        raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return ParityInputs(preprocess_batch(files, variant.image_size).numpy(), [p.name for p in files], real_images=True)


def parity_inputs(variant: Variant, images: Path | None = None, synthetic: int = 8) -> ParityInputs:
    """The images of a folder, or `synthetic` seeded inputs."""
    return image_inputs(variant, images) if images else synthetic_inputs(variant, synthetic)


def parity_rows(
    loaded: LoadedModel,
    paths: Sequence[Path],
    inputs: ParityInputs,
    thresholds: dict[str, float] | None = None,
    threads: int | None = None,
    on_row: Callable[[ParityRow], None] = lambda row: None,
    backends: Sequence[str] = (),
) -> Iterator[ParityRow]:
    """One row per artifact and backend that opens it (default: the backend of its file type); the torch
    reference is computed once per output the artifacts carry."""
    references: dict[tuple, np.ndarray] = {}
    for path, backend in artifact_backends(paths, backends):
        manifest = read_manifest(path)
        head = OutputHead.for_options(loaded.model, manifest.options if isinstance(manifest, GraphManifest) else {})
        if head.key not in references:
            references[head.key] = reference_outputs(head.eval(), inputs.batch)
        threshold = (thresholds or {}).get(manifest.precision if manifest else "fp32")
        row = artifact_parity(path, references[head.key], inputs, threshold, threads, backend.name)
        on_row(row)
        yield row


def artifact_backends(paths: Sequence[Path], backends: Sequence[str] = ()) -> list[tuple[Path, Backend]]:
    """Each artifact with each named backend that runs its file type, or with its default backend; the
    runtimes they need are checked here, before any work."""
    chosen = get_backends(list(backends))
    pairs = [(path, backend) for path in map(Path, paths)
             for backend in ([b for b in chosen if b.opens(path)] if chosen else [default_backend(path)])]
    if not pairs:
        raise UsageError(f"none of the {len(paths)} artifact(s) runs on {', '.join(backends)}")
    for backend in {backend for _, backend in pairs}:
        backend.require()
    return pairs


def parity_report(loaded: LoadedModel, rows: list[ParityRow], inputs: ParityInputs, interrupted: bool = False) -> Report:
    settings = {"inputs": "images" if inputs.real_images else "synthetic", "count": len(inputs.names),
                "reference": "torch eager fp32 (CPU)", "weights": loaded.source.as_dict(),
                "gate": "cosine_mean >= threshold"}
    return make_report("parity", loaded.variant.name, cpu_name(), versions(), settings, rows, interrupted)


def artifacts_to_score(variant: Variant, given: Sequence[Path] = ()) -> list[Path]:
    """The artifacts named (default: every one under artifacts/<variant>/), each checked to be
    readable, complete and for this variant: cheap, so it comes before any weights are loaded."""
    paths = [Path(p) for p in given] or default_artifacts(variant.name)
    for path in paths:
        check_artifact(path, variant)
    return paths


def default_artifacts(variant_name: str, root: Path = artifact_files.ROOT) -> list[Path]:
    """Every artifact with a manifest under artifacts/<variant>/."""
    folder = root / variant_name
    found = sorted(p for p in folder.glob("*")
                   if p.suffix in ARTIFACT_SUFFIXES and manifest_path(p).is_file())
    if not found:
        raise UsageError(f"no artifacts given and none under {folder}; export one with `pe-export onnx` or name files")
    return found


def parity_variant(
    source: ModelSource,
    artifacts: Sequence[Path] = (),
    backends: Sequence[str] = (),
    images: Path | None = None,
    synthetic: int = 8,
    threads: int | None = None,
    on_row: Callable[[ParityRow], None] = lambda row: None,
    progress: Callable[[str], None] = lambda step: None,
    on_total: Callable[[int], None] = lambda rows: None,
) -> Report:
    """`pe-export parity`: backends, inputs and artifacts checked before the weights load (`on_total`
    hears how many rows will come), then `run_parity`."""
    variant = get_variant(source.variant)
    paths = list(artifacts) or default_artifacts(variant.name)
    on_total(len(artifact_backends(paths, backends)))
    inputs = parity_inputs(variant, images, synthetic)
    paths = artifacts_to_score(variant, paths)
    progress("loading weights")
    return run_parity(load_source(source), paths, threads=threads, on_row=on_row, inputs=inputs, backends=backends)


def run_parity(
    loaded: LoadedModel,
    artifacts: Sequence[Path] = (),
    images: Path | None = None,
    synthetic: int = 8,
    thresholds: dict[str, float] | None = None,
    threads: int | None = None,
    on_row: Callable[[ParityRow], None] = lambda row: None,
    inputs: ParityInputs | None = None,
    backends: Sequence[str] = (),
) -> Report:
    """Parity of each artifact (default: all under artifacts/<variant>/) on each backend that runs it
    (default: the one of its file type), on `inputs` (default: the images of `images`, else
    `synthetic` seeded inputs); Ctrl-C keeps the finished rows."""
    inputs = inputs or parity_inputs(loaded.variant, images, synthetic)
    paths = artifacts_to_score(loaded.variant, artifacts)
    rows: list[ParityRow] = []
    try:
        for row in parity_rows(loaded, paths, inputs, thresholds, threads, on_row, backends):
            rows.append(row)
    except KeyboardInterrupt:
        return parity_report(loaded, rows, inputs, interrupted=True)
    return parity_report(loaded, rows, inputs)
