import pytest

from pe_export.errors import UsageError
from pe_export.model import build_model
from pe_export.variants import VARIANTS, get_variant

# name: (image, patch, width, layers, heads, head_dim, params, tokens), from PE_SPEC.md's table
SPEC = {
    "PE-Core-T16-384": (384, 16, 192, 12, 3, 64, 6_140_544, 577),
    "PE-Core-S16-384": (384, 16, 384, 12, 6, 64, 23_782_656, 577),
    "PE-Core-B16-224": (224, 16, 768, 12, 12, 64, 93_672_960, 197),
    "PE-Core-L14-336": (336, 14, 1024, 24, 16, 64, 317_151_232, 577),
    "PE-Core-G14-448": (448, 14, 1536, 50, 16, 96, 1_882_032_640, 1024),
    "PE-Lang-L14-448": (448, 14, 1024, 23, 16, 64, 291_415_040, 1025),
    "PE-Lang-G14-448": (448, 14, 1536, 47, 16, 96, 1_740_922_624, 1024),
    # PLM's towers: PE_SPEC's Lang architectures with other weights (Meta's config.py aliases them)
    "PE-Lang-L14-448-Tiling": (448, 14, 1024, 23, 16, 64, 291_415_040, 1025),
    "PE-Lang-G14-448-Tiling": (448, 14, 1536, 47, 16, 96, 1_740_922_624, 1024),
    "PE-Spatial-T16-512": (512, 16, 192, 12, 3, 64, 5_683_200, 1025),
    "PE-Spatial-S16-512": (512, 16, 384, 12, 6, 64, 21_983_232, 1025),
    "PE-Spatial-B16-512": (512, 16, 768, 12, 12, 64, 86_433_792, 1025),
    "PE-Spatial-L14-448": (448, 14, 1024, 24, 16, 64, 303_964_160, 1025),
    "PE-Spatial-G14-448": (448, 14, 1536, 50, 16, 96, 1_851_887_104, 1024),
}


def test_registry_holds_exactly_the_spec_variants():
    assert [v.name for v in VARIANTS] == [*SPEC, "PLM-1B", "PLM-3B", "PLM-8B"]  # PLM's: tests/model/test_plm.py


@pytest.mark.parametrize("name", SPEC)
def test_config_and_parameter_count(name):
    v = get_variant(name)
    image, patch, width, layers, heads, head_dim, params, tokens = SPEC[name]
    assert (v.image_size, v.patch_size, v.width, v.layers, v.heads, v.head_dim) == (
        image, patch, width, layers, heads, head_dim
    )
    assert v.tokens == tokens
    assert v.parameters == params
    model = build_model(v, "meta")
    assert sum(p.numel() for p in model.parameters()) == params


def test_lang_l14_cost_matches_timm_count():
    assert get_variant("L14").gmacs == pytest.approx(347, abs=1)
    assert get_variant("G14").gmacs / get_variant("L14").gmacs == pytest.approx(5.6, abs=0.2)


@pytest.mark.parametrize(
    "query, name",
    [
        ("L14", "PE-Lang-L14-448"),
        ("l14", "PE-Lang-L14-448"),
        ("G14", "PE-Lang-G14-448"),
        ("pe-core-t16-384", "PE-Core-T16-384"),
        ("vit_pe_lang_large_patch14_448", "PE-Lang-L14-448"),
        ("vit_pe_spatial_tiny_patch16_512.fb", "PE-Spatial-T16-512"),
        ("facebook/PE-Core-G14-448", "PE-Core-G14-448"),
    ],
)
def test_aliases_and_timm_names(query, name):
    assert get_variant(query).name == name


def test_unknown_variant_suggests_the_closest():
    with pytest.raises(UsageError, match="did you mean: .*PE-Lang-L14-448"):
        get_variant("PE-Lang-L14-488")
    with pytest.raises(UsageError, match="L14"):
        get_variant("L41")


def test_default_outputs_and_hub_files():
    assert get_variant("PE-Core-L14-336").default_output == "pooled"
    assert get_variant("L14").default_output == "tokens"
    assert get_variant("L14").hub_repo == "facebook/PE-Lang-L14-448"
    assert get_variant("L14").hub_filename == "PE-Lang-L14-448.pt"
    tiling = get_variant("pe-lang-g14-448-tiling")
    assert (tiling.hub_repo, tiling.hub_filename) == ("facebook/PE-Lang-G14-448-Tiling", "PE-Lang-G14-448-Tiling.pt")
    assert get_variant("facebook/PE-Lang-L14-448-Tiling").name == "PE-Lang-L14-448-Tiling"
