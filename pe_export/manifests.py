"""The typed manifest of every artifact, read and written here only.

Every manifest carries the schema version, the artifact's kind, its key (everything it was made
from, its upstream's identity included), the size and sha256 of each of its files, and its identity:
a digest over the key and those files. A later stage keys on that identity, so a change anywhere
upstream (new weights in an ONNX's external data, say) reaches every artifact below it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from pe_export.errors import UsageError
from pe_export.handoff import Handoff, handoff_of

SCHEMA = "pe-export/manifest/1"
OLDER = "made by an older pe-export"  # why a manifest without this schema is never reused


class Record(BaseModel):
    """A part of a manifest: fixed fields, frozen once read."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FileDigest(Record):
    bytes: int
    sha256: str


class TensorInfo(Record):
    name: str
    dtype: str
    shape: list[Union[int, str]]


class Upstream(Record):
    """The artifact a derived one was made from: where it was and what it was."""

    path: str
    identity: str


class Weights(Record):
    """The checkpoint and the sha256 of its tensors in Meta's names (not of its files), or the seed."""

    checkpoint: Optional[str]
    sha256: Optional[str]
    seed: Optional[int]


class ProfileRef(Record):
    name: str
    path: Optional[str]


class Manifest(BaseModel):
    """What every artifact's manifest holds."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal["pe-export/manifest/1"] = Field(SCHEMA, alias="schema")
    kind: str
    variant: str
    precision: str = "fp32"
    key: dict[str, Any]
    files: dict[str, FileDigest]
    identity: str
    versions: dict[str, Optional[str]] = {}

    def file_bytes(self) -> int:
        return sum(f.bytes for f in self.files.values())

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class GraphManifest(Manifest):
    """An artifact that runs PE itself (an ONNX file, an engine, an IR): its graph's I/O and the export
    options its outputs follow (layer, output kind, static batch)."""

    options: dict[str, Any]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    handoff: Optional[Handoff] = None  # PLM's image features: how an LLM runtime places them (read off the graph)

    @model_validator(mode="after")
    def _with_handoff(self) -> "GraphManifest":
        if self.handoff is None:
            self.handoff = handoff_of(self.options, self.inputs, self.outputs)
        return self

    @property
    def static_batch(self) -> int | None:
        """The graph's fixed batch size, or None when its batch dimension is dynamic."""
        batch = self.inputs[0].shape[0]
        return batch if isinstance(batch, int) and batch > 0 else None


class ExportManifest(GraphManifest):
    kind: Literal["onnx"] = "onnx"
    weights: Weights
    opset: dict[str, int]
    nodes: int
    op_histogram: dict[str, int]
    external_data: bool
    simplify: Optional[dict[str, Any]] = None
    parity: dict[str, Any]
    export_seconds: float
    peak_rss_mb: float


class PrecisionManifest(GraphManifest):
    kind: Literal["precision-onnx"] = "precision-onnx"
    weights: Weights
    source_onnx: Upstream
    profile: ProfileRef
    method: Optional[str]
    calibration_provider: Optional[str]
    exclusions: dict[str, Any]
    calibration: Optional[dict[str, Any]]
    smoothing: Optional[dict[str, Any]]
    external_data: bool
    parity: dict[str, Any]
    qdq_nodes: dict[str, int]
    seconds: float
    peak_rss_mb: dict[str, float]
    auto_exclude: Optional[dict[str, Any]] = None


class EngineManifest(GraphManifest):
    kind: Literal["tensorrt-engine"] = "tensorrt-engine"
    tensorrt: str
    gpu: dict[str, Any]
    settings: dict[str, Any]
    timing_cache: Optional[str]
    source_onnx: Upstream
    build_seconds: float
    engine_bytes: int


class IRManifest(GraphManifest):
    kind: Literal["openvino-ir"] = "openvino-ir"
    inference_precision: str
    device: str
    weights: Weights
    source_onnx: Upstream
    profile: ProfileRef
    parity: dict[str, Any]
    seconds: float
    peak_rss_mb: float


class ProgramManifest(GraphManifest):
    """An on-device program (an ExecuTorch .pte): what its delegate took, and whether its parity was proven
    on its runtime here (a Core ML program cannot run on Linux: converted only, parity not claimed)."""

    kind: Literal["executorch-program"] = "executorch-program"
    delegate: str
    runs_here: bool
    delegation: dict[str, Any]
    calibration: Optional[dict[str, Any]] = None  # int8: the images its activation ranges were observed on
    device: str
    weights: Weights
    profile: ProfileRef
    parity: dict[str, Any]
    seconds: float
    peak_rss_mb: float


class RepositoryManifest(Manifest):
    """A Triton model folder: its config and the served artifact's files."""

    kind: Literal["triton-model"] = "triton-model"
    artifact: Upstream
    model: str


AnyManifest = Annotated[
    Union[ExportManifest, PrecisionManifest, EngineManifest, IRManifest, ProgramManifest, RepositoryManifest], Field(discriminator="kind")]
_ANY = TypeAdapter(AnyManifest)


def identity(key: dict[str, Any], files: dict[str, FileDigest]) -> str:
    """The digest of an artifact: its key and every file it consists of, by name, size and sha256."""
    canonical = json.dumps({"key": key, "files": {n: f.model_dump() for n, f in sorted(files.items())}},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def seal(fields: dict[str, Any], key: dict[str, Any], files: dict[str, FileDigest]) -> dict[str, Any]:
    """A manifest's fields with its key, its files and the identity over both."""
    return {**fields, "key": key, "files": files, "identity": identity(key, files)}


def manifest_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".json")


class ManifestProblem(Exception):
    """Why a manifest file cannot be taken as one of this pe-export's (for reuse: why it is made again)."""


def parse(path: Path) -> Manifest:
    """The manifest in `path`; ManifestProblem, saying why, when it is unreadable, older or foreign."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ManifestProblem(f"its manifest is unreadable ({exc})") from None
    if not isinstance(data, dict) or "schema" not in data:
        raise ManifestProblem(OLDER if isinstance(data, dict) else "its manifest is not a pe-export manifest")
    if data["schema"] != SCHEMA:
        raise ManifestProblem(f"its manifest has schema {data['schema']!r}, this pe-export reads {SCHEMA}")
    try:
        return _ANY.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ManifestProblem(f"its manifest is not a pe-export manifest ({'.'.join(map(str, first['loc']))}: "
                              f"{first['msg']})") from None


def read_manifest(artifact: Path) -> Manifest | None:
    """The artifact's manifest for reading what it holds: None when there is none, one clear error
    (exit 2) when it is corrupt, older or foreign."""
    path = manifest_path(artifact)
    if not path.is_file():
        return None
    try:
        return parse(path)
    except ManifestProblem as exc:
        raise UsageError(f"cannot read the manifest {path}: {exc}; delete it and make the artifact again") from None


def write_manifest(path: Path, manifest: Manifest) -> None:
    path.write_text(json.dumps(manifest.dump(), indent=2) + "\n")
