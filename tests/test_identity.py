"""Artifacts are known by their identity: on Core T16 with every weight in external data (as L14's and G14's
are), new weights upstream remake every derived artifact and say why, an identity that does not fit
is never reused, and a reused chain reads each file once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pe_export.artifacts import Digests
from pe_export.bench.bench import BenchSettings, bench_variant
from pe_export.manifests import read_manifest
from pe_export.model import ModelSource
from pe_export.model.checkpoint import read_checkpoint
from pe_export.pipeline import Plan
from pe_export.pipeline.commands import openvino_variant, quantize_variant
from pe_export.precision.profiles import cpu_profile
from pe_export.processes import run_worker
from pe_export.runners import openvino as ov_runner
from pe_export.serving.repository import model_repository

CORE = "PE-Core-T16-384"
PROFILE = cpu_profile(CORE)  # what bench and openvino use without a named profile


def _seed(seed: int) -> ModelSource:
    return ModelSource(CORE, random_init=True, seed=seed)


def _files(result) -> list[Path]:
    return [result.path.parent / name for name in result.manifest.files]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("identity")


@pytest.fixture(scope="module")
def external():
    """Every export's weights go to `<file>.onnx.data`, the graph file holds none."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("pe_export.onnx.export.EXTERNAL_DATA_BYTES", 0)
        yield


@pytest.fixture(scope="module")
def chains(workdir, external):
    """The int8 chain of seed 0 (fp32, int8, int8 IR, a Triton model), then the same asked of seed 1,
    with what each plan said and a copy of seed 0's artifacts."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        said: dict[int, list[str]] = {0: [], 1: []}
        results = {}
        for seed in (0, 1):
            plan = Plan(_seed(seed), PROFILE, said[seed].append)
            fp32, int8 = plan.fp32(), plan.precision("int8")
            ir = plan.ir("int8") if ov_runner.runs("int8") else None
            repository = model_repository(int8.path, workdir / "models", progress=said[seed].append)
            results[seed] = {"fp32": fp32, "int8": int8, "ir": ir, "repository": repository}
            if seed == 0:
                shutil.copytree(workdir / "artifacts", workdir / "seed0")
        yield results, said


def test_the_graph_file_alone_cannot_tell_the_weights_apart(chains):
    """The case a one-file hash missed: another seed's export changes only the external data."""
    results, _ = chains
    old, new = results[0]["fp32"], results[1]["fp32"]
    assert old.manifest.external_data and set(new.manifest.files) == {new.path.name, f"{new.path.name}.data"}
    graph = old.path.name
    assert old.manifest.files[graph] == new.manifest.files[graph]  # byte-identical graph files
    assert old.manifest.files[f"{graph}.data"] != new.manifest.files[f"{graph}.data"]
    assert old.manifest.identity != new.manifest.identity


def test_new_weights_upstream_remake_every_derived_artifact_and_say_why(chains):
    results, said = chains
    new = results[1]
    assert f"exporting {new['fp32'].path} again: weights.seed changed" in said[1]
    assert f"making {new['int8'].path} again: source_onnx changed" in said[1]
    assert f"making {new['repository'].config} again: artifact changed" in said[1]
    assert not any(line.startswith("reused") for line in said[1])
    int8 = new["int8"].manifest
    assert int8.weights.seed == 1 and int8.source_onnx.identity == new["fp32"].manifest.identity
    assert new["repository"].manifest.artifact.identity == int8.identity and not new["repository"].reused
    served = new["repository"].model_dir / "1" / f"{new['int8'].path.name}.data"
    assert served.read_bytes() == new["int8"].path.with_name(served.name).read_bytes()
    if new["ir"] is not None:
        assert f"making {new['ir'].path} again: source_onnx changed" in said[1]
        assert new["ir"].manifest.weights.seed == 1 and new["ir"].manifest.source_onnx.identity == int8.identity


def test_quantize_bench_and_openvino_never_reuse_the_old_weights(chains, workdir, monkeypatch):
    """Back to seed 0's artifacts, then each command asked for seed 1."""
    monkeypatch.chdir(workdir)
    shutil.rmtree(workdir / "artifacts")
    shutil.copytree(workdir / "seed0", workdir / "artifacts")
    said: list[str] = []
    profile = workdir / "cpu.yaml"  # the CPU profile as a file, for the command
    profile.write_text(f"name: cpu\nvariant: {CORE}\nexport: {{target: ort}}\ntensorrt: null\n")
    made = quantize_variant(_seed(1), "int8", profile=str(profile), progress=said.append)
    assert made.manifest.weights.seed == 1 and any(s.startswith("exporting") and "weights.seed changed" in s
                                                   for s in said)
    shutil.rmtree(workdir / "artifacts")
    shutil.copytree(workdir / "seed0", workdir / "artifacts")
    said.clear()
    settings = BenchSettings(backends=["onnxruntime"], precisions=["int8"], warmup=0, iters=1)
    bench_variant(_seed(1), settings, progress=said.append)
    int8 = made.path
    assert f"making {int8} again: source_onnx changed" in said and read_manifest(int8).weights.seed == 1
    if ov_runner.runs("int8"):
        said.clear()
        ir = openvino_variant(_seed(1), "int8", progress=said.append)
        assert not ir.reused and ir.manifest.weights.seed == 1


def test_an_identity_that_does_not_fit_is_never_reused(chains, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    path = chains[0][1]["int8"].path
    recorded = path.with_name(path.name + ".json")
    manifest = json.loads(recorded.read_text())
    said: list[str] = []
    recorded.write_text(json.dumps({**manifest, "identity": "0" * 64}))
    Plan(_seed(1), PROFILE, said.append).precision("int8")
    assert f"making {path} again: its recorded identity is not that of its key and files" in said
    older = {k: v for k, v in json.loads(recorded.read_text()).items() if k not in ("schema", "identity")}
    recorded.write_text(json.dumps(older))  # as an older pe-export wrote it
    said.clear()
    Plan(_seed(1), PROFILE, said.append).precision("int8")
    assert f"making {path} again: made by an older pe-export" in said


def test_a_reused_chain_reads_each_file_once(chains, workdir, monkeypatch, fixtures, forbid_loading):
    """The checkpoint's tensors, and fp32 ONNX, int8 ONNX and IR, each with its external data, hashed once
    each, and no model built nor worker started."""
    if not ov_runner.runs("int8"):
        pytest.skip("OpenVINO cannot compute int8 here")
    (workdir / "checkpoint").mkdir(exist_ok=True)
    monkeypatch.chdir(workdir / "checkpoint")
    source = ModelSource(CORE, fixtures.checkpoint(CORE))
    made = Plan(source, PROFILE).ir("int8")
    forbid_loading("a reused chain loaded weights")
    plan = Plan(source, PROFILE)
    reused = plan.ir("int8")
    assert reused.reused and reused.manifest == made.manifest
    int8 = plan.precision("int8")
    chain = [*_files(plan.fp32()), *_files(int8), *_files(reused)]
    weights = sum(t.numel() * t.element_size() for t in read_checkpoint(fixtures.checkpoint(CORE)).values())
    assert len(chain) == 6 and plan.digests.hashed_bytes == weights + sum(p.stat().st_size for p in chain)
    started: list[str] = []  # the command's own plan: one worker reads the weights' digest (torch), no other

    def only_the_digest(module, job, *args, **kwargs):
        started.append(job["job"])
        if job["job"] != "digest":
            pytest.fail(f"a reused chain started the {job['job']} worker")
        return run_worker(module, job, *args, **kwargs)

    monkeypatch.setattr("pe_export.pipeline.commands.run_worker", only_the_digest)
    again = openvino_variant(source, "int8", calib="synthetic")
    assert again.reused and again.manifest == made.manifest and started == ["digest"]


def test_digests_are_keyed_on_the_file_not_its_name(tmp_path):
    digests = Digests()
    first = tmp_path / "a.bin"
    first.write_bytes(b"x" * 1000)
    (tmp_path / "b.bin").hardlink_to(first)
    assert digests.sha256(first) == digests.sha256(tmp_path / "b.bin") and digests.hashed_bytes == 1000
    first.write_bytes(b"y" * 1001)  # another file now: hashed again
    assert digests.sha256(tmp_path / "b.bin") == Digests().sha256(first) and digests.hashed_bytes == 2001
    assert Digests(digests.known()).sha256(first) == digests.sha256(first)  # a worker starts from the parent's
