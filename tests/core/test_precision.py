"""Half precision by autocast: which sampler stages autocast, the recipe keys that select it,
and geometry that stays in fp32 under a caller's autocast."""

from __future__ import annotations

import functools

import pytest
import torch

from ouroboros_core import sampler as sampler_module
from ouroboros_core.cameras import camera_rays
from ouroboros_core.recipe import MapsConfig, SamplerConfig, load_recipe
from ouroboros_core.sampler import AUTOCAST_STAGES, STAGES, RecursiveSampler

from toys import SphereCloud, ToyEncoder, ToyEncoderConfig, ToyGenerator, ToyReconstructor, toy_cameras


def _spy(seen: dict[str, set], stage: str, fn):
    """``fn`` recording, under ``stage``, whether CPU autocast was on and in which dtype."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        on = torch.is_autocast_enabled("cpu")
        seen.setdefault(stage, set()).add(torch.get_autocast_dtype("cpu") if on else None)
        return fn(*args, **kwargs)

    return wrapped


def _spied_run(monkeypatch, autocast: torch.dtype | None) -> dict[str, set]:
    """One resample run with feedback encoders (every stage runs), spied on."""
    seen: dict[str, set] = {}
    torch.manual_seed(0)
    gen, rec = ToyGenerator(), ToyReconstructor()
    encoders = [ToyEncoder(ToyEncoderConfig(map_kind=k)) for k in ("rgb", "ccm")]
    for name in ("prepare", "denoise", "decode", "encode"):
        setattr(gen, name, _spy(seen, name, getattr(gen, name)))
    rec.reconstruct = _spy(seen, "reconstruct", rec.reconstruct)
    for enc in encoders:
        enc.forward = _spy(seen, "encode", enc.forward)
    monkeypatch.setattr(SphereCloud, "render", _spy(seen, "render", SphereCloud.render))
    monkeypatch.setattr(sampler_module, "feedback_maps", _spy(seen, "render", sampler_module.feedback_maps))
    sampler = RecursiveSampler(gen, rec, encoders, SamplerConfig(steps=3, sigma_max=20.0, mode="resample"), MapsConfig(), autocast)
    # a caller's own autocast must not leak into the fp32 stages
    with torch.autocast("cpu", dtype=torch.float16, enabled=autocast is not None):
        out = sampler(torch.full((1, 3, 16, 16), 0.5), toy_cameras(), generator=torch.Generator().manual_seed(0))
    assert out.latents.dtype == torch.float32 and torch.isfinite(out.views).all()
    return seen


def test_autocast_covers_the_models_and_not_conditioning_or_rendering(monkeypatch):
    seen = _spied_run(monkeypatch, torch.bfloat16)
    assert set(seen) == set(STAGES)
    assert set(AUTOCAST_STAGES) == {"denoise", "decode", "reconstruct", "encode"}
    for stage in STAGES:
        expected = {torch.bfloat16} if stage in AUTOCAST_STAGES else {None}
        assert seen[stage] == expected, f"{stage}: autocast {seen[stage]}, expected {expected}"


def test_without_autocast_nothing_autocasts(monkeypatch):
    seen = _spied_run(monkeypatch, None)
    assert all(dtypes == {None} for dtypes in seen.values()), seen


def test_recipe_keys_resolve_to_weights_and_autocast_dtypes():
    official = load_recipe("svd-lgm").model  # the official script: fp32 weights, fp16 autocast
    assert (official.dtype, official.autocast, official.weights_dtype, official.autocast_dtype) == ("fp16", True, "fp32", "fp16")
    paper = load_recipe("svd-lgm-paper").model  # inherited: the paper does not say
    assert (paper.weights_dtype, paper.autocast_dtype) == ("fp32", "fp16")
    bf16 = load_recipe("svd-lgm", ["dtype=bf16"]).model  # what `generate --dtype bf16` sets
    assert (bf16.weights_dtype, bf16.autocast_dtype) == ("fp32", "bf16")
    full = load_recipe("svd-lgm", ["dtype=fp32"]).model
    assert (full.weights_dtype, full.autocast_dtype) == ("fp32", None)
    cast = load_recipe("svd-lgm", ["autocast=false"]).model
    assert (cast.weights_dtype, cast.autocast_dtype) == ("fp16", None)
    tiny = load_recipe("tiny").model
    assert (tiny.dtype, tiny.autocast, tiny.weights_dtype, tiny.autocast_dtype) == ("fp32", False, "fp32", None)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_camera_rays_stay_in_the_cameras_dtype_under_autocast(dtype):
    cams = toy_cameras()
    o, d = camera_rays(cams, 8, 8)
    with torch.autocast("cpu", dtype=dtype):
        o_amp, d_amp = camera_rays(cams, 8, 8)
    assert o_amp.dtype == d_amp.dtype == torch.float32
    assert torch.equal(o_amp, o) and torch.equal(d_amp, d)
