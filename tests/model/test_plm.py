"""PerceptionLM's vision model: the PE-Lang tower's tokens through PLM's projector, against Meta's
`MLPProjector` (references in plm_projector/, made with Meta's code), loaded from Meta's and Hugging
Face's checkpoint formats (the LLM's weights skipped), and exported to one ONNX graph."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pe_export.artifacts import Digests, reusable
from pe_export.errors import CheckpointError
from pe_export.handoff import image_embeddings, place_embeddings
from pe_export.manifests import read_manifest
from pe_export.model import load_model
from pe_export.onnx.spec import export_key, resolve
from pe_export.model.pe import Projector
from pe_export.variants import get_variant
from pe_export.validate import compare

HERE = Path(__file__).resolve().parent / "plm_projector"
_spec = importlib.util.spec_from_file_location("make_projector_reference", HERE / "make_reference.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)
REFERENCE = np.load(HERE / "reference.npz")
# PLM's shape on the T16 fixture tower: 1024 patch tokens after the class token, 256 out, D 64
PLM_T16 = dataclasses.replace(get_variant("PE-Spatial-T16-512"), name="PLM-T16", family="PLM", projector_dim=64,
                              timm_name="")


def _projector(width: int, dim: int, seed: int, pool_first: bool) -> Projector:
    projector = Projector(width, dim, pool_first)
    projector.load_state_dict({k.removeprefix("vision_projector."): v
                               for k, v in reference.projector_weights(width, dim, seed).items()})
    return projector.eval()


@pytest.mark.parametrize("pool_first", [True, False])
@pytest.mark.parametrize("case", ["d2048", "d3072"])
def test_the_projector_is_metas_at_plm_widths(case, pool_first):
    width, dim, seed = reference.CASES[case]
    with torch.no_grad():
        out = _projector(width, dim, seed, pool_first)(reference.tokens(seed, width))
    assert out.shape == (1, 256, dim)
    np.testing.assert_allclose(out[reference.SAMPLE].numpy(), REFERENCE[f"{case}/sample"], rtol=0, atol=2e-5)
    np.testing.assert_allclose(out.double().sum(-1).numpy(), REFERENCE[f"{case}/sums"], rtol=0, atol=2e-3)


def _meta_checkpoint(fixtures, path: Path) -> Path:
    """PLM's consolidated.pth layout: vision_model.*, vision_projector.*, and LLM keys to be skipped."""
    tower = torch.load(fixtures.checkpoint("PE-Spatial-T16-512"), weights_only=True)
    state = {**{f"vision_model.{k}": v for k, v in tower.items()}, **reference.projector_weights(192, 64, 0),
             "tok_embeddings.weight": torch.zeros(8, 4), "layers.0.attention.wq.weight": torch.zeros(4, 4)}
    torch.save(state, path)
    return path


_TO_TIMM = (("conv1.", "patch_embed.proj."), ("ln_pre.", "norm_pre."), ("transformer.resblocks.", "blocks."),
            (".ln_1.", ".norm1."), (".ln_2.", ".norm2."), (".attn.in_proj_", ".attn.qkv."), (".attn.out_proj.", ".attn.proj."),
            (".ls_1.gamma", ".gamma_1"), (".ls_2.gamma", ".gamma_2"), (".mlp.c_fc.", ".mlp.fc1."), (".mlp.c_proj.", ".mlp.fc2."))


def _hf_checkpoint(fixtures, path: Path) -> Path:
    """The same weights as Hugging Face's PerceptionLM writes them (timm names under model.vision_tower)."""
    from safetensors.torch import save_file

    state = {}
    for key, value in torch.load(fixtures.checkpoint("PE-Spatial-T16-512"), weights_only=True).items():
        if key == "class_embedding":
            key, value = "cls_token", value.reshape(1, 1, -1)
        elif key == "positional_embedding":
            key, value = "pos_embed", value[None]
        for meta, timm in _TO_TIMM:
            key = key.replace(meta, timm)
        state[f"model.vision_tower.timm_model.{key}"] = value.contiguous()
    for key, value in reference.projector_weights(192, 64, 0).items():
        state[key.replace("vision_projector.projector.0.", "model.multi_modal_projector.linear_1.")
              .replace("vision_projector.projector.2.", "model.multi_modal_projector.linear_2.")] = value
    state["model.language_model.embed_tokens.weight"] = torch.zeros(8, 4)
    state["lm_head.weight"] = torch.zeros(8, 4)
    save_file(state, path)
    return path


@pytest.mark.parametrize("form", ["meta", "hf"])
def test_plm_checkpoints_load_the_tower_and_projector_and_match_meta(fixtures, tmp_path, form):
    make = _meta_checkpoint if form == "meta" else _hf_checkpoint
    path = make(fixtures, tmp_path / ("consolidated.pth" if form == "meta" else "model.safetensors"))
    loaded = load_model(PLM_T16, path)
    x = torch.from_numpy(fixtures.outputs("PE-Spatial-T16-512")["input"])
    with torch.no_grad():
        out = loaded.model(x)
    assert out.shape == (1, 256, 64)
    np.testing.assert_allclose(out.numpy(), REFERENCE["t16/output"], rtol=0, atol=1e-5)


def test_sharded_checkpoints_load_from_any_part_or_their_folder(fixtures, tmp_path):
    """Meta's consolidated.NN.pth parts and Hugging Face's shards with their index, as files or folders;
    a shard holding only the LLM is never opened (here it is not even a safetensors file)."""
    from safetensors.torch import load_file, save_file

    whole = torch.load(_meta_checkpoint(fixtures, tmp_path / "whole.pth"), weights_only=True)
    meta = tmp_path / "meta"
    meta.mkdir()
    tower = {k: v for k, v in whole.items() if k.startswith("vision_model.")}
    torch.save(tower, meta / "consolidated.00.pth")
    torch.save({k: v for k, v in whole.items() if k not in tower}, meta / "consolidated.01.pth")
    hf = tmp_path / "hf"
    hf.mkdir()
    state = load_file(_hf_checkpoint(fixtures, tmp_path / "whole.safetensors"))
    shards = {"model-00001-of-00003.safetensors": [k for k in state if ".vision_tower." in k],
              "model-00002-of-00003.safetensors": [k for k in state if "projector" in k or k == "lm_head.weight"]}
    for name, keys in shards.items():
        save_file({k: state[k] for k in keys}, hf / name)
    (hf / "model-00003-of-00003.safetensors").write_bytes(b"the LLM: never read")
    weight_map = {k: name for name, keys in shards.items() for k in keys}
    weight_map["model.language_model.embed_tokens.weight"] = "model-00003-of-00003.safetensors"
    (hf / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    x = torch.from_numpy(fixtures.outputs("PE-Spatial-T16-512")["input"])
    for path in (meta, meta / "consolidated.01.pth", hf, hf / "model.safetensors.index.json",
                 hf / "model-00002-of-00003.safetensors"):
        with torch.no_grad():
            out = load_model(PLM_T16, path).model(x)
        np.testing.assert_allclose(out.numpy(), REFERENCE["t16/output"], rtol=0, atol=1e-5, err_msg=str(path))
    (hf / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="names shards that are not beside it: model-00002-of-00003"):
        load_model(PLM_T16, hf)


def test_a_users_own_projector_width_comes_from_the_checkpoint(fixtures, tmp_path):
    """A VLM of its own LLM width (D 48 here): the PLM variant takes D from the checkpoint, whose whole
    projector is then held to it; a registered size's checkpoint under another PLM name is named."""
    from pe_export.model.checkpoint import check_keys, expected_shapes, fit_projector

    weights = reference.projector_weights(192, 48, 5)
    state = {k: v for k, v in torch.load(_meta_checkpoint(fixtures, tmp_path / "plm.pth"), weights_only=True).items()
             if not k.startswith("vision_projector.")}
    torch.save({**state, **weights}, tmp_path / "own.pth")
    loaded = load_model(PLM_T16, tmp_path / "own.pth")
    assert loaded.variant.projector_dim == 48 and loaded.variant.name == "PLM-T16"
    meta_form = Projector(192, 48, pool_first=False)
    meta_form.load_state_dict({k.removeprefix("vision_projector."): v for k, v in weights.items()})
    outputs = fixtures.outputs("PE-Spatial-T16-512")
    with torch.no_grad():
        got = loaded.model(torch.from_numpy(outputs["input"]))
        expected = meta_form.eval()(torch.from_numpy(outputs["features_norm_strip"]))
    assert got.shape == (1, 256, 48)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=2e-5)
    weights["vision_projector.projector.2.weight"] = weights["vision_projector.projector.2.weight"][:, :40]
    torch.save({**state, **weights}, tmp_path / "torn.pth")
    with pytest.raises(CheckpointError, match=r"mis-shaped: vision_projector.projector.2.weight \[48, 40\] \(expected \[48, 48\]\)"):
        load_model(PLM_T16, tmp_path / "torn.pth")
    three = {k: torch.empty(s, device="meta") for k, s in expected_shapes(get_variant("PLM-3B")).items()}
    assert fit_projector(get_variant("PLM-1B"), three) == get_variant("PLM-1B")
    with pytest.raises(CheckpointError, match="is a PLM-3B checkpoint, not PLM-1B: use --variant PLM-3B"):
        check_keys(get_variant("PLM-1B"), three, Path("consolidated.pth"))


def test_the_plm_variants():
    one, three, eight = (get_variant(f"PLM-{size}") for size in ("1B", "3B", "8B"))
    assert (one.projector_dim, three.projector_dim, eight.projector_dim) == (2048, 3072, 4096)
    assert one.width == three.width == 1024 and eight.width == 1536 and one.output_tokens == 256
    assert one.default_output == "image_features" and one.hub_repo == "facebook/Perception-LM-1B"
    # the tower's parameters plus the two Linears
    assert one.parameters == get_variant("L14").parameters + 1024 * 2048 + 2048 + 2048 * 2048 + 2048
    assert sum(p.numel() for p in load_model(three, random_init=True).model.parameters()) == three.parameters


def test_a_plm_onnx_gives_image_features_for_any_tile_count(fixtures, tmp_path):
    from pe_export.onnx.export import ExportOptions, export_variant
    from pe_export.runners import open_runner
    from pe_export.source import ModelSource

    result = export_variant(ModelSource(PLM_T16, _meta_checkpoint(fixtures, tmp_path / "consolidated.pth")),
                            options=ExportOptions(target="ort"), output=tmp_path / "plm.onnx")
    assert [o.name for o in result.manifest.outputs] == ["image_features"]
    assert result.manifest.outputs[0].shape[1:] == [256, 64]
    x = torch.from_numpy(fixtures.outputs("PE-Spatial-T16-512")["input"])
    tiles = torch.cat([x, x.flip(-1), -x])
    with torch.no_grad():
        expected = load_model(PLM_T16, tmp_path / "consolidated.pth").model(tiles).numpy()
    with open_runner(result.path, threads=2) as runner:
        got = runner.run(tiles.numpy())
    assert got.shape == (3, 256, 64)
    assert compare(expected, got).cosine_min >= 0.99999
    np.testing.assert_allclose(got[:1], REFERENCE["t16/output"], rtol=0, atol=1e-4)
    handoff = result.manifest.handoff  # what an LLM runtime reads to place the embeddings
    assert (handoff.embedding_dim, handoff.tokens_per_tile, handoff.tile_size) == (64, 256, 512)
    assert handoff.dtype == "float32" and handoff.image_token_id == 128002
    assert read_manifest(result.path).handoff == handoff
    # the recipe: one image's output as the [T, D] rows that replace its image tokens, in order
    rows = image_embeddings(got)
    ids = np.array([1, 5, *[128002] * len(rows), 7])
    text = np.random.default_rng(0).standard_normal((len(ids), 64)).astype(np.float32)
    placed = place_embeddings(ids, text, rows)
    expected = torch.from_numpy(text).masked_scatter(torch.from_numpy(ids == 128002)[:, None], torch.from_numpy(got))
    np.testing.assert_array_equal(placed, expected.numpy())  # as Hugging Face's PerceptionLM places them
    assert np.array_equal(placed[2:258], got[0]) and np.array_equal(placed[258 + 256:-1], got[2])
    with pytest.raises(ValueError, match="the prompt has 768 image tokens but 512 embeddings"):
        place_embeddings(ids, text, rows[:512])
    # the same weights in Hugging Face's form: the same identity, so the artifact is reused as it is
    hf = load_model(PLM_T16, _hf_checkpoint(fixtures, tmp_path / "model.safetensors")).source
    key = export_key(PLM_T16, hf, resolve(ExportOptions(target="ort"), PLM_T16))
    assert reusable(result.path, key, Digests())[0] == result.manifest


def test_a_plm_model_goes_through_quantize_openvino_and_triton(plm_t16, fixtures, tmp_path, monkeypatch):
    """Every later stage takes a PLM variant like any other: int8 from the Meta checkpoint (the projector
    kept out of Q/DQ, as the shipped PLM profiles ask), the OpenVINO IR, a Triton model and its image
    ensemble on a real server; each keeps the hand-off."""
    import onnx

    from pe_export.pipeline import Plan
    from pe_export.precision.profiles import load_profile
    from pe_export.runners import openvino as ov_runner
    from pe_export.serving.repository import model_repository
    from pe_export.source import ModelSource

    monkeypatch.chdir(tmp_path)
    profile = tmp_path / "plm.yaml"
    profile.write_text("name: plm-t16\nvariant: PLM-T16\nexport: {target: ort}\ntensorrt: null\n"
                       "calibration: {source: synthetic, samples: 8, batch_size: 4}\n"
                       "quantization: {int8: {exclude: ['^conv1/', '^vision_projector\\.']}}\n"
                       "parity: {int8: 0.99}\n")
    plan = Plan(ModelSource(plm_t16, _meta_checkpoint(fixtures, tmp_path / "consolidated.pth")), load_profile(profile))
    int8 = plan.precision("int8")
    assert int8.parity.passed and int8.parity.cosine_mean >= 0.99 and int8.manifest.handoff.embedding_dim == 64
    graph = onnx.load(str(int8.path), load_external_data=False).graph
    fed_by = {out: node.op_type for node in graph.node for out in node.output}
    quantized = {node.name for node in graph.node if node.op_type in ("MatMul", "Gemm")
                 and any(fed_by.get(i) == "DequantizeLinear" for i in node.input)}
    assert quantized and not any(name.startswith("vision_projector") for name in quantized)
    assert any(name.startswith("transformer.resblocks.11.mlp") for name in quantized)
    if ov_runner.runs("fp32"):
        ir = plan.ir("fp32")
        assert ir.parity.passed and ir.parity.cosine_mean >= 0.99999 and ir.manifest.handoff == plan.fp32().manifest.handoff
    served = model_repository(int8.path, tmp_path / "models")
    assert (served.model_dir / "config.pbtxt").is_file() and served.manifest.artifact.identity == int8.manifest.identity
    _serve_an_image(plm_t16, int8.path, tmp_path)


def _serve_an_image(plm, artifact: Path, tmp_path: Path) -> None:
    """On a real Triton server: one encoded image in, the features of its thumbnail and tiles out, equal
    to the artifact run on `preprocess`'s input for the same file; a batch limit below 1 + 36 is refused."""
    from PIL import Image

    from pe_export.errors import UsageError
    from pe_export.model.inputs import model_input
    from pe_export.runners import open_runner
    from pe_export.serving.client import TritonClient
    from pe_export.serving.repository import ServingOptions, model_repository
    from pe_export.serving.server import ServerSettings, free_ports, running_server

    with pytest.raises(UsageError, match="more than the model's batch limit 8: serve it with --max-batch 37"):
        model_repository(artifact, tmp_path / "small", ServingOptions(max_batch_size=8, images=True))
    assert not (tmp_path / "small").exists()
    picture = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (150, 1200, 3), dtype=np.uint8)).save(picture)
    prepared = model_input(picture, plm)
    assert (prepared.grid.columns, prepared.grid.rows) == (16, 2) and prepared.pixel_values.shape == (33, 3, 512, 512)
    with open_runner(artifact) as runner:
        expected = runner.run(prepared.pixel_values)
    http_port, grpc_port, metrics_port = free_ports(3)
    settings = ServerSettings(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, start_seconds=120)
    with running_server(artifact, ServingOptions(name="plm", instance_kind="cpu", images=True), settings) as server:
        client = TritonClient(server.url)
        try:
            got = client.infer("plm_images", "image", "image_features", np.frombuffer(picture.read_bytes(), np.uint8))
        finally:
            client.close()
    assert got.shape == (33, 256, 64)
    assert compare(expected, got).cosine_min >= 0.99999

