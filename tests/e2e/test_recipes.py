"""The shipped recipes validate against the installed plugins and say what they promise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ouroboros_core.pipeline import ImageTo3DPipeline
from ouroboros_core.recipe import list_recipes, load_recipe
from tests.e2e.test_generate import FAST, object_rgba

#: the tiny plugins with random weights at 64² (the shipped `tiny` recipe is the trained model)
TINY_RANDOM = str(Path(__file__).resolve().parents[1] / "recipes" / "tiny-random.yaml")

#: our recipe files (installed as ouroboros_plugins.recipes); other installed distributions may
#: register recipes too, so tests select ours by file, never "everything installed"
RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
DOCUMENTED = {"resample", "svd-lgm", "svd-lgm-paper", "tiny", "two-stage"}


def _check_shipped_recipes() -> None:
    ours = {p.stem for p in RECIPES_DIR.glob("*.yaml")}
    found = list_recipes()
    assert DOCUMENTED <= ours
    for name in sorted(ours):  # each is listed as our file (not shadowed) and validates
        assert found[name].resolve() == RECIPES_DIR / f"{name}.yaml"
        assert load_recipe(name).name == name


def test_every_shipped_recipe_validates():
    _check_shipped_recipes()


def test_shipped_recipe_check_ignores_other_installed_recipes(tmp_path, monkeypatch):
    from ouroboros_core import hookimpl, registry as registry_module
    from ouroboros_core.registry import Registry

    other = tmp_path / "their-demo.yaml"
    other.write_text("extends: tiny\n")

    class ThirdParty:
        @hookimpl
        def ouroboros3d_register_recipes(self, register):
            register(other)

    registry = Registry()
    registry.add_plugin(ThirdParty(), name="their", distribution="ouroboros3d-their", version="1.0")
    monkeypatch.setattr(registry_module, "_default", registry)
    assert "their-demo" in list_recipes()
    _check_shipped_recipes()


def test_reference_recipe_is_the_official_setup():
    r = load_recipe("svd-lgm")
    g, l, m = r.generator_config, r.reconstructor_config, r.model
    assert (g.num_views, g.image_size, g.guidance_min, g.guidance_max) == (8, 512, 1.0, 3.0)
    assert (g.rays, g.feedback_placement, g.base_weights) == ("official", "official", "stabilityai/stable-video-diffusion-img2vid")
    assert g.cfg_time_context == "official" and r.model.sampler.skipped_steps == "zero"
    assert (l.input_views, l.input_size, l.time_input, l.rotation) == ([0, 2, 4, 6], 256, "official", "official")
    assert (m.sampler.steps, m.sampler.sigma_min, m.sampler.sigma_max, m.sampler.mode) == (25, 0.002, 700.0, "joint")
    assert m.maps.ccm == "official"
    assert [c.map_kind for c in r.feedback_configs] == ["rgb", "ccm"]
    assert m.generator.weights == "huanngzh/Ouroboros3D-SVD-LGM:mv_model_unet.pth"
    assert m.reconstructor.weights == "huanngzh/Ouroboros3D-SVD-LGM:recon_model.pth"


def test_variants_change_only_what_they_name():
    paper = load_recipe("svd-lgm-paper")
    assert (paper.generator_config.rays, paper.generator_config.feedback_placement) == ("paper", "paper")
    assert paper.generator_config.cfg_time_context == "correct" and paper.model.sampler.skipped_steps == "keep"
    t = paper.model.trainer  # paper §4 and Eq. 2: 30k steps, total batch 32, MSE + LPIPS(VGG)
    assert (t.max_steps, t.batch_size * t.grad_accum, t.grad_clip, t.lr, t.mixed_precision) == (30000, 32, 1.0, 1e-5, "bf16")
    assert (t.loss.color, t.loss.lpips_net, t.loss.color_weight, t.loss.lpips_weight) == ("mse", "vgg", 1.0, 1.0)
    assert paper.generator_config.train_latents == "sample"
    assert paper.reconstructor_config.time_input == "paper" and paper.model.maps.ccm == "canonical"
    assert all(c.zero_init_outputs for c in paper.feedback_configs)
    assert all(e.weights is None for e in paper.model.feedback)
    assert load_recipe("two-stage").model.sampler.mode == "none"
    assert load_recipe("resample").model.sampler.mode == "resample"
    for name in ("two-stage", "resample"):
        assert load_recipe(name).generator_config == load_recipe("svd-lgm").generator_config


@pytest.mark.parametrize(
    "knobs",
    [
        ["dtype=bf16"],
        ["attention_backend=math", "sampler.decode_only_input_views=true"],
        ["sampler.feedback_every=2", "sampler.feedback_sigma_range=[0.01, 100]", "sampler.solver=heun"],
        ["sampler.mode=resample"],
    ],
)
def test_speed_knobs_run_the_tiny_recipe(knobs):
    pipe = ImageTo3DPipeline.from_recipe(TINY_RANDOM, FAST + knobs)
    result = pipe(object_rgba(), seed=0)
    assert result.views.shape == (8, 3, 64, 64) and torch.isfinite(result.views).all()


def test_compile_flag_compiles_the_hot_modules_lazily():
    pipe = ImageTo3DPipeline.from_recipe(TINY_RANDOM, FAST + ["compile=true"])
    # nn.Module.compile() wraps the call lazily: nothing is compiled before the first call
    compiled = {name for name, m in [("unet", pipe.generator.unet), ("vae", pipe.generator.vae), ("lgm", pipe.reconstructor.unet)] if m._compiled_call_impl is not None}
    assert compiled == {"unet", "vae", "lgm"}
    assert all(e._compiled_call_impl is not None for e in pipe.encoders)  # no targets named: the encoder itself
    assert pipe.generator.image_encoder._compiled_call_impl is None
