"""The published-checkpoint path end to end, on tiny models: a recipe shaped like svd-lgm
loads an official-format ``mv_model_unet.pth`` (UNet + Plücker MLPs + both adapters, on top
of a diffusers base folder) and ``recon_model.pth``, and generates exactly what the original
modules generate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from ouroboros_core.build import build_components
from ouroboros_core.pipeline import ImageTo3DPipeline
from ouroboros_core.recipe import load_recipe
from ouroboros_plugins.generators.svd.weights import official_state_dict
from tests.e2e.test_generate import object_rgba

#: the tiny plugins with random weights at 64² (the shipped `tiny` recipe is the trained model)
TINY_RANDOM = str(Path(__file__).resolve().parents[1] / "recipes" / "tiny-random.yaml")

RECIPE = {
    "extends": "svd-lgm",
    "generator": {"type": "svd", "preset": "tiny-official", "config": {"image_size": 64}},
    "reconstructor": {
        "type": "lgm",
        "preset": "tiny",
        "config": {"time_input": "official", "rotation": "official", "antialias": False},
    },
    "feedback": [
        {"type": "adapter", "preset": "tiny", "config": {"map_kind": "rgb"}},
        {"type": "adapter", "preset": "tiny", "config": {"map_kind": "ccm"}},
    ],
    "sampler": {"steps": 2},
    "output": {"video": False},
    "device": "cpu",
    "dtype": "fp32",  # svd-lgm's fp16 autocast is slow on a CPU and beside the point here
}


def test_official_format_files_load_through_a_recipe(tmp_path):
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({**RECIPE, "generator": {**RECIPE["generator"], "weights": None}, "reconstructor": {**RECIPE["reconstructor"], "weights": None}, "feedback": [dict(f, weights=None) for f in RECIPE["feedback"]]}))
    recipe = load_recipe(plain, ["seed=123"])
    original = build_components(recipe)

    # the published layout: a diffusers base for VAE/CLIP, mv_model_unet.pth, recon_model.pth
    ckpt = tmp_path / "Ouroboros3D-SVD-LGM"
    ckpt.mkdir()
    original.generator.save_pretrained(str(tmp_path / "svd-base"))
    torch.save(official_state_dict(original.generator, original.encoders), ckpt / "mv_model_unet.pth")
    torch.save(original.reconstructor.state_dict(), ckpt / "recon_model.pth")
    assert not any(k.startswith(("vae.", "image_encoder.")) for k in torch.load(ckpt / "mv_model_unet.pth", weights_only=True))

    loaded_file = tmp_path / "published.yaml"
    data = yaml.safe_load(plain.read_text())
    data["generator"]["config"]["base_weights"] = str(tmp_path / "svd-base")
    data["generator"]["weights"] = "./Ouroboros3D-SVD-LGM/mv_model_unet.pth"  # relative to this recipe
    data["reconstructor"]["weights"] = "./Ouroboros3D-SVD-LGM/recon_model.pth"
    for entry in data["feedback"]:
        entry["weights"] = "./Ouroboros3D-SVD-LGM"  # the adapter's default file is mv_model_unet.pth
    loaded_file.write_text(yaml.safe_dump(data))

    pipe = ImageTo3DPipeline.from_recipe(loaded_file)  # seed 42: a different random init
    assert not any(c.random_init for c in pipe.components)
    reference = ImageTo3DPipeline(
        recipe, original.generator.eval(), original.reconstructor.eval(), [e.eval() for e in original.encoders],
        torch.device("cpu"), torch.float32, original.infos,
    )
    ours = pipe(object_rgba(), seed=5)
    theirs = reference(object_rgba(), seed=5)
    assert torch.equal(ours.views, theirs.views)
    assert torch.equal(ours.representation.means, theirs.representation.means)
    assert ours.representation.raw_quaternions  # official rotation behaviour


def test_offline_missing_base_is_reported_before_building(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from ouroboros_core.errors import WeightsError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "mv.pth").write_bytes(b"")
    recipe = load_recipe(TINY_RANDOM, ["generator.preset=tiny-official", f"generator.weights={tmp_path / 'mv.pth'}",
                                  "generator.config.base_weights=stabilityai/stable-video-diffusion-img2vid"])
    with pytest.raises(WeightsError, match=r"1 weights source is not available\. Not in the local Hugging Face cache .*"
                       r"generator\.config\.base_weights = stabilityai/stable-video-diffusion-img2vid \(fix: .*hf download"):
        build_components(recipe)


def test_random_init_needs_no_base_weights_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    recipe = load_recipe(TINY_RANDOM, ["generator.preset=tiny-official", "generator.config.base_weights=stabilityai/stable-video-diffusion-img2vid"])
    assert build_components(recipe).random_init == ["svd", "lgm", "adapter", "adapter"]
