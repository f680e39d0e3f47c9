"""The SVD multi-view generator plugin (tiny configs on the CPU unless stated).

Reference facts: the official-code reference (official-ouroboros3d.md) §1.4 (conditioning), §2
(Plücker rays, injection sites), §7 (checkpoint layout) and the manifest
reference/checkpoints/ouroboros3d-mv_model_unet.json.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from ouroboros_core.cameras import Cameras, unproject_depth
from ouroboros_core.errors import WeightsError
from ouroboros_core.weights import inspect_file
from ouroboros_plugins.feedback import SPEC as ADAPTER
from ouroboros_plugins.generators.svd import SPEC, SVDGeneratorConfig
from ouroboros_plugins.generators.svd.camera import harmonic_encoding, plucker_field
from ouroboros_plugins.generators.svd.weights import official_state_dict

# a copy of the reference manifest (state-dict layout of the published mv_model_unet.pth)
MANIFEST = Path(__file__).parent / "data" / "ouroboros3d-mv_model_unet.json"
torch.set_num_threads(2)
S, L = 32, 4  # image and latent size of the tiny presets


def _gen(preset: str = "tiny", seed: int = 0, **config):
    torch.manual_seed(seed)
    return SPEC.build(config, preset=preset).eval()


def _image(batch: int = 1, size: int = S, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _prepare(gen, batch: int = 1, seed: int = 1, **kwargs):
    S = gen.config.image_size
    return gen.prepare(_image(batch, S, seed), Cameras.official(batch), generator=torch.Generator().manual_seed(7), **kwargs)


def _latents(ctx, seed: int = 3) -> torch.Tensor:
    return torch.randn(ctx.latent_shape, generator=torch.Generator().manual_seed(seed))


def _zero_feedback(gen, batch: int = 1) -> list[torch.Tensor]:
    S, V = gen.config.image_size, gen.config.num_views
    return [torch.zeros(batch, V, s.channels, S // s.stride, S // s.stride) for s in gen.feedback_slots]


# ---------------------------------------------------------------------- plugin surface
def test_entry_modules_do_not_import_torch():
    code = (
        "import sys, ouroboros_plugins.generators.svd as g, ouroboros_plugins.feedback as f;"
        "assert 'torch' not in sys.modules, 'torch imported';"
        "print(g.SPEC.kind, g.SPEC.name, f.SPEC.kind, f.SPEC.name)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["generator", "svd", "feedback", "adapter"]


def test_feedback_slots_follow_the_config():
    full = SVDGeneratorConfig()
    assert [(s.channels, s.stride) for s in full.feedback_slots()] == [(320, 8), (640, 16), (1280, 32), (1280, 64)]
    assert SVDGeneratorConfig(feedback_placement="none").feedback_slots() == []
    tiny = SPEC.make_config(None, "tiny")
    assert [(s.channels, s.stride) for s in tiny.feedback_slots()] == [(32, 8), (64, 16)]
    pixel = SPEC.make_config(None, "tiny-pixel")
    assert [(s.channels, s.stride) for s in pixel.feedback_slots()] == [(32, 1), (64, 2)]
    # the adapter presets emit exactly these slots
    assert ADAPTER.make_config(None, "tiny").output_slots() == tiny.feedback_slots()
    assert ADAPTER.make_config(None, "tiny-pixel").output_slots() == pixel.feedback_slots()
    assert ADAPTER.make_config(None, None).output_slots() == full.feedback_slots()


def test_inconsistent_config_is_rejected():
    with pytest.raises(ValidationError, match="in_channels/out_channels must be 6/3"):
        SPEC.make_config({"autoencoder": "identity"}, "tiny")
    with pytest.raises(ValidationError, match="cross_attention_dim"):
        SPEC.make_config({"image_encoder": {"projection_dim": 16}}, "tiny")
    with pytest.raises(ValidationError, match="multiple of 16"):
        SPEC.make_config({"image_size": 72}, "tiny")


def test_unknown_submodel_argument_names_the_key():
    from ouroboros_core.errors import RecipeError

    config = SPEC.make_config(None, "tiny")
    config.unet["num_layerz"] = 2
    with pytest.raises(RecipeError, match=r"config\.unet.*num_layerz"):
        SPEC.build(config)


def test_conformance_kit():
    from ouroboros_core.testing import check_component

    check_component(SPEC)  # tiny
    check_component(SPEC, "tiny-pixel")


# ---------------------------------------------------------------------- full size (meta device)
def test_full_size_default_matches_the_published_checkpoint_layout():
    """Default preset + two official adapters on the meta device = the manifest's keys and shapes."""
    with torch.device("meta"):
        gen = SPEC.build()
        encoders = [ADAPTER.build({"map_kind": kind}, preset="official") for kind in ("rgb", "ccm")]
    ours = {k: list(v.shape) for k, v in official_state_dict(gen, encoders).items()}
    manifest = json.loads(MANIFEST.read_text())
    assert ours == manifest["keys"]
    assert sum(p.numel() for p in encoders[0].parameters()) == 115_264_320
    assert sum(v.numel() for v in official_state_dict(gen, encoders).values()) == manifest["total_params"]


# ---------------------------------------------------------------------- weights
def _official_file(tmp_path: Path, seed: int = 0) -> tuple[Path, object, list]:
    gen = _gen("tiny-official", seed)
    torch.manual_seed(seed + 100)
    encoders = [ADAPTER.build({"map_kind": k}, preset="tiny") for k in ("rgb", "ccm")]
    path = tmp_path / "mv_model_unet.pth"
    torch.save(official_state_dict(gen, encoders), path)
    return path, gen, encoders


def test_save_pretrained_round_trip_gives_identical_outputs(tmp_path):
    from diffusers import UNetSpatioTemporalConditionModel

    gen = _gen("tiny-official", seed=0)
    gen.save_pretrained(str(tmp_path / "model"))
    assert {p.name for p in (tmp_path / "model").iterdir()} == {
        "unet", "vae", "image_encoder", "camera.safetensors", "ouroboros_svd.json"
    }
    # the UNet folder is plain diffusers: a second reader sees the same tensors
    plain = UNetSpatioTemporalConditionModel.from_pretrained(str(tmp_path / "model"), subfolder="unet")
    assert all(torch.equal(v, gen.unet.state_dict()[k]) for k, v in plain.state_dict().items())

    other = _gen("tiny-official", seed=1)
    other.load_weights(str(tmp_path / "model"))
    ctx_a, ctx_b = _prepare(gen), _prepare(other)
    x, s = _latents(ctx_a), torch.tensor([3.0])
    with torch.no_grad():
        assert torch.equal(gen.denoise(x, s, ctx_a, _zero_feedback(gen)), other.denoise(x, s, ctx_b, _zero_feedback(other)))
        assert torch.equal(gen.decode(x), other.decode(x))


def test_save_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "keep.txt").write_text("x")
    with pytest.raises(WeightsError, match="not empty"):
        _gen().save_pretrained(str(tmp_path / "model"))


def test_official_checkpoint_loads_strictly_with_the_base(tmp_path):
    path, ref, encoders = _official_file(tmp_path)
    base = tmp_path / "base"
    ref.save_pretrained(str(base))  # stands in for the SVD img2vid folder (same VAE/CLIP)

    fresh = _gen("tiny-official", seed=5)
    with pytest.raises(WeightsError, match="holds no image_encoder/vae weights.*base_weights"):
        fresh.load_weights(str(path))

    fresh = _gen("tiny-official", seed=5, base_weights=str(base))
    fresh.load_weights(str(path))
    ref_sd = ref.state_dict()
    assert all(torch.equal(v, ref_sd[k]) for k, v in fresh.state_dict().items())

    for kind, encoder in zip(("rgb", "ccm"), encoders):
        loaded = ADAPTER.build({"map_kind": kind}, preset="tiny")
        loaded.load_weights(str(path))
        assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_mismatched_checkpoint_fails_naming_the_keys(tmp_path):
    path, _, _ = _official_file(tmp_path)
    sd = torch.load(path, weights_only=True)
    sd.pop("mid_plucker.embed.2.bias")
    sd["up_plucker.0.embed.9.weight"] = torch.zeros(1)
    sd["unet.conv_in.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "bad.pth"
    gen = _gen("tiny-official", base_weights=None)
    # VAE/CLIP present so the strict load itself is what fails
    sd.update({f"vae.{k}": v for k, v in gen.vae.state_dict().items()})
    sd.update({f"image_encoder.{k}": v for k, v in gen.image_encoder.state_dict().items()})
    torch.save(sd, bad)
    with pytest.raises(WeightsError) as err:
        gen.load_weights(str(bad))
    message = str(err.value)
    assert "mid_plucker.embed.2.bias" in message
    assert "up_plucker.0.embed.9.weight" in message
    assert "unet.conv_in.weight" in message

    report = inspect_file(bad, SPEC, "tiny-official")
    assert not report.ok and "mid_plucker.embed.2.bias" in report.format()


def test_weights_inspect_uses_the_full_size_default(tmp_path):
    path, _, _ = _official_file(tmp_path)
    assert inspect_file(path, SPEC, "tiny-official").ok
    report = inspect_file(path, SPEC)  # default preset: full-size SVD
    assert not report.ok
    assert report.model_parameters > 2_000_000_000
    assert "unet.conv_in.weight (file [32, 8, 3, 3] vs model [320, 8, 3, 3])" in report.format()


def test_missing_weights_file_is_a_user_error(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        _gen().load_weights(str(tmp_path / "nope.pth"))


# ---------------------------------------------------------------------- cameras
def _official_plucker_numpy(c2w: np.ndarray, K: np.ndarray, res: int) -> np.ndarray:
    """§2.2 evaluated literally in float64: ij grid at pixel centres, u0 (row) feeds camera x,
    p = ((u0-cx)/fx, (u1-cy)/fy, 1, 1), world = einsum('ij,hwi->hwj', E, p), d = normalize(
    world[:3] - t), o = t, Plücker [o x d, d], harmonics [sin dim-major, cos, raw]."""
    i, j = np.meshgrid(np.arange(res), np.arange(res), indexing="ij")
    u0, u1 = (i + 0.5) / res, (j + 0.5) / res
    out = []
    for E, k in zip(c2w, K):
        fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
        p = np.stack([(u0 - cx) / fx, (u1 - cy) / fy, np.ones_like(u0), np.ones_like(u0)], -1)
        world = np.einsum("ij,hwi->hwj", E, p)[..., :3]
        t = E[:3, 3]
        d = world - t
        d = d / np.linalg.norm(d, axis=-1, keepdims=True)
        o = np.broadcast_to(t, d.shape)
        pl = np.concatenate([np.cross(o, d), d], -1)
        angles = (pl[..., None] * (2.0 ** np.arange(6))).reshape(res, res, 36)
        out.append(np.concatenate([np.sin(angles), np.cos(angles), pl], -1).transpose(2, 0, 1))
    return np.stack(out)


def test_official_plucker_features_match_numpy():
    cams = Cameras.official(dtype=torch.float64)
    gen = _gen("tiny-official")
    ctx = _prepare(gen)
    for level, res in enumerate((L, L // 2)):
        expected = _official_plucker_numpy(cams.c2w[0].numpy(), cams.intrinsics[0].numpy(), res)
        got = ctx.data["camera_features"][level][0].numpy()
        assert got.shape == (8, 78, res, res)
        np.testing.assert_allclose(got, expected, atol=2e-4)


def test_paper_rays_pass_through_the_back_projection_of_their_pixel():
    cams = Cameras.orbit([10.0, 95.0, 200.0], [25.0, -15.0, 40.0], radius=2.0, fov_deg=50.0)
    cams.intrinsics[..., 0, 2] = 0.45  # an off-centre principal point must be handled too
    h, w = 6, 5
    rays = plucker_field(cams, h, w, "paper")  # (1, 3, 6, h, w)
    depth = torch.full((1, 3, 1, h, w), 1.7)
    points = unproject_depth(depth, cams)  # (1, 3, 3, h, w)
    m, d = rays[:, :, :3], rays[:, :, 3:]
    assert torch.allclose(d.norm(dim=2), torch.ones(1, 3, h, w), atol=1e-6)
    assert torch.allclose(torch.linalg.cross(points, d, dim=2), m, atol=1e-5)
    towards = ((points - cams.centers[..., None, None]) * d).sum(2)
    assert (towards > 0).all()
    # the official computation is not the correct one on the same cameras
    assert (plucker_field(cams, h, w, "official") - rays).abs().max() > 0.1


def test_harmonic_encoding_layout():
    x = torch.tensor([[0.5, -1.0]])
    out = harmonic_encoding(x, 3)
    f = torch.tensor([1.0, 2.0, 4.0])
    angles = torch.cat([0.5 * f, -1.0 * f])
    assert torch.allclose(out[0], torch.cat([angles.sin(), angles.cos(), x[0]]))


def test_official_inplace_camera_add_reaches_the_stored_skips():
    """Official mode: the conv_in output (skip 0) and the last down-block output (last skip)
    carry the camera terms of down block 0 and of the mid block; paper mode leaves them."""
    for preset, inplace in (("tiny-official", True), ("tiny", False)):
        gen = _gen(preset)
        if not inplace:
            for mlp in [*gen.down_plucker, gen.mid_plucker]:  # non-zero camera terms in paper mode too
                torch.nn.init.normal_(mlp.embed[2].weight)
        seen: dict[str, torch.Tensor] = {}
        hooks = [
            gen.unet.conv_in.register_forward_hook(lambda m, a, o: seen.__setitem__("conv_in", o.clone())),
            gen.unet.down_blocks[-1].register_forward_hook(lambda m, a, o: seen.__setitem__("last_down", o[0].clone())),
            gen.unet.up_blocks[0].register_forward_pre_hook(
                lambda m, a, k: seen.__setitem__("up0_skips", [t.clone() for t in k["res_hidden_states_tuple"]]), with_kwargs=True
            ),
            gen.unet.up_blocks[-1].register_forward_pre_hook(
                lambda m, a, k: seen.__setitem__("up_last_skips", [t.clone() for t in k["res_hidden_states_tuple"]]), with_kwargs=True
            ),
        ]
        ctx = _prepare(gen, guidance=(1.0, 1.0))
        with torch.no_grad():
            gen.denoise(_latents(ctx), torch.tensor([2.0]), ctx)
            levels = ctx.data["camera_features"]
            cam_down0 = gen.down_plucker[0](levels[0])
            cam_mid = gen.mid_plucker(levels[-1])
        for h in hooks:
            h.remove()
        skip0, last_skip = seen["up_last_skips"][0], seen["up0_skips"][-1]
        if inplace:
            assert torch.allclose(skip0, seen["conv_in"] + cam_down0, atol=1e-5)
            assert torch.allclose(last_skip, seen["last_down"] + cam_mid, atol=1e-5)
        else:
            assert torch.equal(skip0, seen["conv_in"])
            assert torch.equal(last_skip, seen["last_down"])
        assert cam_down0.abs().max() > 1e-3 and cam_mid.abs().max() > 1e-3


# ---------------------------------------------------------------------- conditioning and denoising
def test_guidance_ramp_and_single_batched_pass():
    # the CFG pair equals two separate calls only with the batch-correct temporal context
    # (tests/plugins/test_svd_official.py covers the official diffusers-0.25.0 ordering)
    gen = _gen("tiny-official", cfg_time_context="correct")
    ctx = _prepare(gen)
    ramp = ctx.data["guidance"]
    expected = [1 + 2 * i / 7 for i in range(8)]
    assert torch.allclose(ramp, torch.tensor(expected))
    assert math.isclose(ramp[1].item(), 1.2857142857, rel_tol=1e-6)

    calls = []
    hook = gen.unet.register_forward_pre_hook(lambda m, a, k: calls.append(k.get("sample", a[0] if a else None).shape[0]), with_kwargs=True)
    x, s = _latents(ctx), torch.tensor([4.0])
    fb = [torch.randn_like(f) for f in _zero_feedback(gen)]
    with torch.no_grad():
        guided = gen.denoise(x, s, ctx, fb)
        hook.remove()
        assert calls == [2]  # one UNet call on [uncond, cond]
        cond_ctx = _prepare(gen, guidance=(1.0, 1.0))
        assert cond_ctx.data["guidance"] is None
        x0_c = gen.denoise(x, s, cond_ctx, fb)
        uncond = _prepare(gen, guidance=(1.0, 1.0))
        uncond.data["image_embeds"] = torch.zeros_like(uncond.data["image_embeds"])
        uncond.data["cond_latent"] = torch.zeros_like(uncond.data["cond_latent"])
        x0_u = gen.denoise(x, s, uncond, fb)
    expected_x0 = x0_u + torch.tensor(expected).view(1, 8, 1, 1, 1) * (x0_c - x0_u)
    assert torch.allclose(guided, expected_x0, atol=1e-5)
    assert not torch.allclose(x0_c, x0_u, atol=1e-3)


def test_conditioning_inputs():
    gen = _gen("tiny-official")
    image = _image(1, S)
    ctx = gen.prepare(image, Cameras.official(), generator=torch.Generator().manual_seed(7))
    assert ctx.latent_shape == (1, 8, 4, L, L)
    assert torch.equal(ctx.data["added_time_ids"], torch.tensor([[6.0, 127.0, 0.02]]))
    # the concatenated latent is the unscaled VAE mode of the noise-augmented image
    noise = torch.randn(1, 3, S, S, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = gen.vae.encode(image * 2 - 1 + 0.02 * noise).latent_dist.mode()
    assert torch.allclose(ctx.data["cond_latent"], expected, atol=1e-5)
    # CLIP sees the clean image: the embedding does not depend on the noise draw
    other = gen.prepare(image, Cameras.official(), generator=torch.Generator().manual_seed(8))
    assert torch.equal(other.data["image_embeds"], ctx.data["image_embeds"])
    assert not torch.equal(other.data["cond_latent"], ctx.data["cond_latent"])


def test_denoise_at_tiny_sigma_returns_the_input():
    gen = _gen()
    ctx = _prepare(gen)
    x = _latents(ctx)
    with torch.no_grad():
        assert torch.allclose(gen.denoise(x, torch.tensor([1e-6]), ctx), x, atol=1e-5)


def test_denoise_is_v_preconditioned():
    """x0 = x/(s²+1) - s/sqrt(s²+1) F(x/sqrt(s²+1), 0.25 ln s) against a direct UNet call."""
    gen = _gen()
    ctx = _prepare(gen, guidance=(1.0, 1.0))
    x, s = _latents(ctx), 2.5
    with torch.no_grad():
        x0 = gen.denoise(x, torch.tensor([s]), ctx)
        gen._injector.remove()  # the plain UNet (paper mode: camera MLPs start at zero)
        lat = ctx.data["cond_latent"][:, None].expand(1, 8, 4, L, L)
        F = gen.unet(
            torch.cat([x / math.sqrt(s * s + 1), lat], 2),
            torch.tensor([0.25 * math.log(s)]),
            encoder_hidden_states=ctx.data["image_embeds"],
            added_time_ids=ctx.data["added_time_ids"],
        ).sample
    assert torch.allclose(x0, x / (s * s + 1) - s / math.sqrt(s * s + 1) * F, atol=1e-5)


def test_feedback_changes_the_output_but_zero_initialised_encoders_do_not():
    maps = torch.rand(1, 8, 3, S, S, generator=torch.Generator().manual_seed(4))
    for preset, encoder_preset, changes in (("tiny-official", "tiny", True), ("tiny", "tiny", True), ("tiny", "tiny-paper", False)):
        gen = _gen(preset)
        encoder = ADAPTER.build(preset=encoder_preset)
        ctx = _prepare(gen)
        x, s = _latents(ctx), torch.tensor([1.5])
        with torch.no_grad():
            plain = gen.denoise(x, s, ctx)
            with_feedback = gen.denoise(x, s, ctx, encoder(maps))
        assert (with_feedback - plain).abs().max().item() > 1e-4 if changes else torch.equal(with_feedback, plain)


@pytest.mark.parametrize("placement", ["official", "paper"])
def test_each_feedback_slot_reaches_the_output(placement):
    gen = _gen("tiny", feedback_placement=placement)
    ctx = _prepare(gen)
    x, s = _latents(ctx), torch.tensor([1.5])
    zeros = _zero_feedback(gen)
    with torch.no_grad():
        base = gen.denoise(x, s, ctx, zeros)
        for k in range(len(zeros)):
            fb = list(zeros)
            fb[k] = torch.randn_like(fb[k])
            assert (gen.denoise(x, s, ctx, fb) - base).abs().max() > 1e-4, f"slot {k} has no effect"


def test_gradients_reach_encoders_and_plucker_mlps():
    gen = _gen("tiny-official").train()
    encoders = [ADAPTER.build({"map_kind": k}, preset="tiny") for k in ("rgb", "ccm")]
    images = torch.rand(2, 8, 3, S, S, generator=torch.Generator().manual_seed(2))
    ctx = gen.training_context(images, Cameras.official(2), generator=torch.Generator().manual_seed(3))
    maps = [torch.rand(2, 8, 3, S, S), torch.rand(2, 8, 3, S, S)]
    feats = [sum(parts) for parts in zip(*(enc(m) for enc, m in zip(encoders, maps)))]
    x0 = gen.denoise(_latents(ctx), torch.tensor([0.7, 3.0]), ctx, feats)
    x0.square().mean().backward()
    for enc in encoders:
        assert enc.conv_in.weight.grad.abs().sum() > 0
        assert enc.body[-1].block2.weight.grad.abs().sum() > 0
    for mlp in [*gen.down_plucker, gen.mid_plucker, *gen.up_plucker]:
        assert mlp.embed[0].weight.grad.abs().sum() > 0 and mlp.embed[2].weight.grad.abs().sum() > 0


def test_batch_of_two_equals_two_single_calls():
    gen = _gen("tiny-official", cfg_time_context="correct")  # the official ordering mixes objects
    images = torch.cat([_image(1, S, seed=1), _image(1, S, seed=2)])
    cams = Cameras.cat([Cameras.official(), Cameras.orbit([0, 30, 60, 90, 120, 150, 180, 210], 20.0)])
    sigma = torch.tensor([0.8, 12.0])
    x = torch.randn(2, 8, 4, L, L, generator=torch.Generator().manual_seed(5))
    fb = [torch.randn(2, 8, s.channels, S // s.stride, S // s.stride) for s in gen.feedback_slots]
    with torch.no_grad():
        both = gen.denoise(x, sigma, gen.prepare(images, cams, noise_aug_strength=0.0), fb)
        for b in range(2):
            ctx = gen.prepare(images[b : b + 1], Cameras(cams.c2w[b : b + 1], cams.intrinsics[b : b + 1]), noise_aug_strength=0.0)
            single = gen.denoise(x[b : b + 1], sigma[b : b + 1], ctx, [f[b : b + 1] for f in fb])
            assert torch.allclose(both[b : b + 1], single, atol=1e-5)


def test_training_context_augmentation_and_dropout():
    gen = _gen("tiny", cond_dropout=1 / 3)
    images = torch.rand(16, 8, 3, S, S, generator=torch.Generator().manual_seed(2))
    ctx = gen.training_context(images, Cameras.official(), generator=torch.Generator().manual_seed(9))
    assert ctx.data["guidance"] is None
    ids = ctx.data["added_time_ids"]
    assert torch.equal(ids[:, :2], torch.tensor([[6.0, 127.0]]).expand(16, 2))
    sigma_c = ids[:, 2]
    assert (sigma_c > 0).all() and sigma_c.unique().numel() == 16  # one draw per sample
    clip_dropped = ctx.data["image_embeds"].flatten(1).abs().sum(1) == 0
    latent_dropped = ctx.data["cond_latent"].flatten(1).abs().sum(1) == 0
    # with p = 1/3 every sample drops CLIP (r < 2/3), the latent (r >= 1/3) or both
    assert (clip_dropped | latent_dropped).all()
    assert clip_dropped.any() and latent_dropped.any() and (clip_dropped & latent_dropped).any()

    gen = _gen("tiny", cond_dropout=0.0)
    none = gen.training_context(images[:4], Cameras.official(), generator=torch.Generator().manual_seed(9))
    assert (none.data["image_embeds"].flatten(1).abs().sum(1) > 0).all()
    assert (none.data["cond_latent"].flatten(1).abs().sum(1) > 0).all()


# ---------------------------------------------------------------------- autoencoders
def test_encode_decode_use_the_vae_scaling_factor():
    gen = _gen()
    images = torch.rand(1, 3, 3, S, S, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        z = gen.encode(images)
        expected = gen.vae.encode(images[0] * 2 - 1).latent_dist.mode() * 0.18215
        assert torch.allclose(z[0], expected, atol=1e-5)
        out = gen.decode(z)
        direct = gen.vae.decode(z[0] / 0.18215, num_frames=3).sample / 2 + 0.5
    assert out.shape == (1, 3, 3, S, S)
    assert torch.allclose(out[0], direct, atol=1e-5)


def test_pixel_space_without_clip():
    gen = _gen("tiny-pixel")
    assert gen.vae is None and gen.image_encoder is None
    images = torch.rand(2, 8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(gen.encode(images), images * 2 - 1)
    assert torch.allclose(gen.decode(gen.encode(images)), images, atol=1e-6)
    ctx = gen.prepare(images[:, 0], Cameras.official(2), noise_aug_strength=0.0)
    assert torch.allclose(ctx.data["cond_latent"], images[:, 0] * 2 - 1)
    assert torch.equal(ctx.data["image_embeds"], torch.zeros(2, 1, 32))
    with torch.no_grad():
        x0 = gen.denoise(torch.randn(ctx.latent_shape), torch.tensor([1.0, 2.0]), ctx, _zero_feedback(gen, 2))
    assert x0.shape == (2, 8, 3, 16, 16) and torch.isfinite(x0).all()


def test_pixel_shuffle_autoencoder_is_lossless_and_matches_the_slots():
    gen = _gen("tiny32")
    assert gen.vae is None and gen.config.latent_channels == 12 and gen.config.latent_stride == 2
    images = torch.rand(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    z = gen.encode(images)
    assert z.shape == (2, 8, 12, 16, 16)
    # channel c*4 + 2i + j of latent pixel (y, x) is pixel (2y + i, 2x + j) of colour c, in [-1, 1]
    assert torch.equal(z[1, 3, 2 * 4 + 2 * 1 + 0, 5, 7], images[1, 3, 2, 11, 14] * 2 - 1)
    assert torch.allclose(gen.decode(z), images, atol=1e-6)
    assert [(s.channels, s.stride) for s in gen.config.feedback_slots()] == [(32, 2), (64, 4), (64, 8)]
    assert ADAPTER.make_config(None, "tiny32").output_slots() == gen.config.feedback_slots()
    ctx = gen.prepare(images[:, 0], Cameras.official(2), noise_aug_strength=0.0)
    with torch.no_grad():
        x0 = gen.denoise(torch.randn(ctx.latent_shape), torch.tensor([1.0, 2.0]), ctx, _zero_feedback(gen, 2))
    assert x0.shape == (2, 8, 12, 16, 16) and torch.isfinite(x0).all()


def test_image_tokens_carry_the_condition_through_cross_attention(tmp_path):
    gen = _gen("tiny32", image_conditioning="tokens")
    size = 32 // 2
    assert gen.image_tokens.position.shape == (1, size * size, 32)
    a, b = _image(1, 32, seed=1), _image(1, 32, seed=2)
    x, s = torch.randn(1, 8, 12, size, size, generator=torch.Generator().manual_seed(3)), torch.tensor([5.0])

    def x0(model, image, keep_concat: bool) -> torch.Tensor:
        ctx = model.prepare(image, Cameras.official(1), noise_aug_strength=0.0)
        if not keep_concat:  # only the tokens may carry the image now
            ctx.data["cond_latent"] = torch.zeros_like(ctx.data["cond_latent"])
        with torch.no_grad():
            return model.denoise(x, s, ctx, _zero_feedback(model))

    # the tokens are the pixel-shuffled condition, projected, plus the position embedding
    ctx = gen.prepare(a, Cameras.official(1), noise_aug_strength=0.0)
    latent = torch.nn.functional.pixel_unshuffle(a * 2 - 1, 2)
    expected = latent.flatten(2).transpose(1, 2) @ gen.image_tokens.proj.weight.T + gen.image_tokens.proj.bias + gen.image_tokens.position
    assert torch.allclose(gen.image_tokens(ctx.data["token_latent"]), expected, atol=1e-6)
    assert not torch.allclose(x0(gen, a, False), x0(gen, b, False), atol=1e-4)
    concat = _gen("tiny32")  # control: without tokens, a zeroed concat latent leaves no trace of the image
    assert torch.equal(x0(concat, a, False), x0(concat, b, False))

    # trained: the projection gets gradients through the training context
    gen.train()
    images = torch.rand(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    ctx = gen.training_context(images, Cameras.official(2), generator=torch.Generator().manual_seed(5))
    gen.denoise(torch.randn(ctx.latent_shape), torch.tensor([0.7, 3.0]), ctx, _zero_feedback(gen, 2)).square().mean().backward()
    assert gen.image_tokens.proj.weight.grad.abs().sum() > 0 and gen.image_tokens.position.grad.abs().sum() > 0
    gen.eval()

    # saved and loaded as a diffusers folder (tokens in their own file) and as a flat file
    gen.save_pretrained(str(tmp_path / "model"))
    assert (tmp_path / "model" / "image_tokens.safetensors").is_file()
    other = _gen("tiny32", seed=1, image_conditioning="tokens")
    other.load_weights(str(tmp_path / "model"))
    assert torch.equal(x0(gen, a, True), x0(other, a, True))
    (tmp_path / "model" / "image_tokens.safetensors").unlink()
    with pytest.raises(WeightsError, match="image_tokens.safetensors is missing"):
        other.load_weights(str(tmp_path / "model"))


def test_a_deep_copy_injects_its_own_tensors():
    """EMA-style copies must keep working: the copy's hooks read the copy's feedback and cameras."""
    import copy

    gen = _gen("tiny-official")
    twin = copy.deepcopy(gen)
    ctx = _prepare(gen)
    x, s = _latents(ctx), torch.tensor([1.5])
    fb = [torch.randn_like(f) for f in _zero_feedback(gen)]
    with torch.no_grad():
        assert torch.equal(twin.denoise(x, s, ctx, fb), gen.denoise(x, s, ctx, fb))
        torch.nn.init.zeros_(twin.mid_plucker.embed[2].weight)
        assert not torch.equal(twin.denoise(x, s, ctx, fb), gen.denoise(x, s, ctx, fb))


def test_vae_and_clip_are_frozen_like_the_official_training():
    gen = _gen("tiny")
    assert all(not p.requires_grad for p in gen.vae.parameters())
    assert all(not p.requires_grad for p in gen.image_encoder.parameters())
    assert all(p.requires_grad for p in gen.unet.parameters())
    assert all(p.requires_grad for p in gen.down_plucker.parameters())
