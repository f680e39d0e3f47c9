"""The recursive sampler (Algorithm 2) with the toy components of ``toys.py``."""

from __future__ import annotations

import io

import pytest
import torch

from ouroboros_core.edm import euler_step, initial_noise_scale, karras_sigmas
from ouroboros_core.errors import RecipeError, SamplingError
from ouroboros_core.maps import feedback_maps
from ouroboros_core.recipe import MapsConfig, SamplerConfig
from ouroboros_core.sampler import STAGES, ProgressBar, RecursiveSampler

from toys import ToyEncoder, ToyEncoderConfig, ToyGenerator, ToyGeneratorConfig, ToyReconstructor, toy_cameras

STEPS = 6


def make(mode="joint", encoders=("rgb", "ccm"), **sampler_kwargs):
    torch.manual_seed(0)
    gen = ToyGenerator(ToyGeneratorConfig(with_slots=bool(encoders)))
    rec = ToyReconstructor()
    encs = [ToyEncoder(ToyEncoderConfig(map_kind=k), record=True) for k in encoders]
    cfg = SamplerConfig(steps=STEPS, sigma_max=20.0, mode=mode, **sampler_kwargs)
    return RecursiveSampler(gen, rec, encs, cfg, MapsConfig()), gen, rec, encs


def run(sampler, batch=1, seed=0, callbacks=()):
    image = torch.full((batch, 3, 16, 16), 0.5)
    return sampler(image, toy_cameras(), generator=torch.Generator().manual_seed(seed), callbacks=callbacks)


def test_mode_none_reconstructs_once_and_equals_plain_euler():
    sampler, gen, rec, _ = make(mode="none", encoders=())
    result = run(sampler)
    assert len(rec.calls) == 1 and rec.calls[0]["sigma"] is None
    assert result.num_reconstructions == 1
    # independent loop: same noise, the analytic denoiser, Euler steps
    x = torch.randn((1, 4, 3, 16, 16), generator=torch.Generator().manual_seed(0)) * initial_noise_scale(20.0, 0.25)
    sig = karras_sigmas(STEPS, 0.002, 20.0, dtype=torch.float64)
    for i in range(STEPS):
        s = float(sig[i])
        x0 = 0.5 + 0.25**2 / (0.25**2 + s**2) * (x - 0.5)
        x = euler_step(x, x0, s, float(sig[i + 1]))
    assert torch.allclose(result.latents, x, atol=1e-5)
    assert torch.allclose(result.views, x.clamp(0, 1), atol=1e-5)
    # the reconstructor read the final views it is configured for (views 0 and 2)
    assert torch.allclose(rec.calls[0]["images"], result.views[:, [0, 2]])
    assert all(not c["feedback"] for c in gen.denoise_calls)


def test_mode_none_with_encoders_uses_zero_maps_only():
    sampler, gen, rec, encs = make(mode="none")
    run(sampler)
    assert len(rec.calls) == 1
    for enc in encs:  # features of the zero maps are computed once and reused
        assert len(enc.seen) == 1 and not enc.seen[0].any()
    assert all(c["feedback"] for c in gen.denoise_calls)


def test_joint_feeds_step_i_maps_into_step_i_plus_1():
    sampler, gen, rec, encs = make(mode="joint")
    infos = []
    result = run(sampler, callbacks=[infos.append])
    assert len(infos) == STEPS
    assert result.num_reconstructions == STEPS + 1  # every step plus the fresh final one
    sig = karras_sigmas(STEPS, 0.002, 20.0, dtype=torch.float64)
    for enc in encs:
        assert enc.seen[0].shape == (1, 4, 3, 16, 16) and not enc.seen[0].any()  # zero maps at step 0
        assert len(enc.seen) == STEPS  # new maps after every step but the last
    for i, info in enumerate(infos):
        call = rec.calls[i]
        # the reconstructor read decoded x0 of step i (views 0, 2) at sigma_i
        assert torch.allclose(call["images"], info.x0[:, [0, 2]])
        assert call["sigma"].item() == pytest.approx(float(sig[i]), rel=1e-6)
        # the maps of step i are the renders of step i's reconstruction...
        out = info.representation.render(toy_cameras(), 16, 16, background=1.0)
        expected = feedback_maps(out, toy_cameras(), ["rgb", "ccm"], MapsConfig())
        for k, enc in zip(("rgb", "ccm"), encs):
            assert torch.allclose(info.maps[k], expected[k])
            # ...and they are what the encoder sees at step i + 1
            if i + 1 < STEPS:
                assert torch.equal(enc.seen[i + 1], info.maps[k])
    assert rec.calls[-1]["sigma"] is None
    # the feedback changes the result
    none_result = run(make(mode="none")[0])
    assert not torch.allclose(result.views, none_result.views)


@pytest.mark.parametrize("fed", [["rgb"], ["ccm"], []])
def test_feedback_maps_selects_the_kinds_fed_back(fed):
    sampler, gen, rec, encs = make(mode="joint", feedback_maps=fed)
    infos = []
    run(sampler, callbacks=[infos.append])
    assert len(rec.calls) == STEPS + 1  # the 3D loop runs either way
    for kind, enc in zip(("rgb", "ccm"), encs):
        later = torch.stack(enc.seen[1:])
        assert later.any() if kind in fed else not later.any()  # the others stay at the step-0 zeros
    with pytest.raises(RecipeError, match=r"sampler.feedback_maps: \['normal'\]"):
        make(mode="joint", feedback_maps=["normal"])


def test_feedback_every_k_steps_keeps_previous_maps():
    sampler, gen, rec, encs = make(mode="joint", feedback_every=2)
    infos = []
    run(sampler, callbacks=[infos.append])
    assert [info.feedback for info in infos] == [i % 2 == 0 for i in range(STEPS)]
    assert len(rec.calls) == STEPS // 2 + 1
    # maps change only after feedback steps: seen at steps 0 (zeros), 1, 3, 5
    assert len(encs[0].seen) == 1 + STEPS // 2
    assert torch.equal(infos[1].maps["rgb"], infos[0].maps["rgb"])
    assert not torch.equal(infos[2].maps["rgb"], infos[1].maps["rgb"])


def test_feedback_sigma_window():
    sig = karras_sigmas(STEPS, 0.002, 20.0, dtype=torch.float64)
    low, high = 0.05, 5.0
    sampler, gen, rec, encs = make(mode="joint", feedback_sigma_range=(low, high))
    infos = []
    run(sampler, callbacks=[infos.append])
    due = [low <= float(sig[i]) <= high for i in range(STEPS)]
    assert 0 < sum(due) < STEPS
    assert [info.feedback for info in infos] == due
    assert [float(c["sigma"]) for c in rec.calls[:-1]] == pytest.approx([float(sig[i]) for i in range(STEPS) if due[i]], rel=1e-6)


def test_final_reconstruction_last_step_reuses_representation():
    sampler, gen, rec, _ = make(mode="joint", final_reconstruction="last_step")
    infos = []
    result = run(sampler, callbacks=[infos.append])
    assert result.num_reconstructions == STEPS == len(rec.calls)
    assert result.representation is infos[-1].representation
    assert all(c["sigma"] is not None for c in rec.calls)


def test_resample_blends_rendered_views_into_x0():
    sampler, gen, rec, _ = make(mode="resample", encoders=(), resample_weight=1.0)
    infos = []
    run(sampler, callbacks=[infos.append])
    for info in infos:
        rendered = info.representation.render(toy_cameras(), 16, 16, background=1.0).rgb
        assert torch.allclose(info.x0, rendered.clamp(0, 1), atol=1e-6)
    assert not any(c["feedback"] for c in gen.denoise_calls)


def test_decode_only_input_views():
    sampler, gen, rec, _ = make(mode="joint", decode_only_input_views=True)
    shapes = []
    decode = gen.decode
    gen.decode = lambda z: shapes.append(z.shape[1]) or decode(z)
    result = run(sampler)
    assert shapes == [2] * STEPS + [4]  # input views during sampling, all views at the end
    assert result.views.shape == (1, 4, 3, 16, 16)


def test_heun_evaluates_twice_except_last_step():
    sampler, gen, rec, _ = make(mode="joint", solver="heun")
    run(sampler)
    assert len(gen.denoise_calls) == 2 * STEPS - 1
    assert len(rec.calls) == STEPS + 1


def test_batch_seed_determinism_timings_and_progress():
    sampler, *_ = make(mode="joint")
    a = run(sampler, batch=2, seed=3)
    b = run(sampler, batch=2, seed=3)
    c = run(sampler, batch=2, seed=4)
    assert a.views.shape == (2, 4, 3, 16, 16)
    assert torch.equal(a.views, b.views) and not torch.equal(a.views, c.views)
    assert set(a.timings) == set(STAGES) | {"total"}
    assert all(v >= 0 for v in a.timings.values())
    assert a.timings["total"] >= sum(a.timings[s] for s in STAGES) - 1e-6
    out = io.StringIO()
    run(sampler, callbacks=[ProgressBar(STEPS, file=out)])
    assert f"{STEPS}/{STEPS}" in out.getvalue()


def test_nan_raises_sampling_error_naming_the_step():
    sampler, gen, _, _ = make(mode="joint")
    with torch.no_grad():
        gen.offset.fill_(float("nan"))
    with pytest.raises(SamplingError, match=r"step 0 \(sigma 20\)"):
        run(sampler)


def test_joint_sampling_with_a_gaussian_cloud_reconstructor():
    from toys import GaussianToyReconstructor

    from ouroboros_core.gaussians import GaussianCloud

    torch.manual_seed(0)
    gen = ToyGenerator()
    rec = GaussianToyReconstructor()
    encs = [ToyEncoder(ToyEncoderConfig(map_kind=k), record=True) for k in ("rgb", "ccm")]
    sampler = RecursiveSampler(gen, rec, encs, SamplerConfig(steps=3, sigma_max=20.0), MapsConfig())
    result = run(sampler)
    assert isinstance(result.representation, GaussianCloud)
    assert result.num_reconstructions == 4 and len(rec.calls) == 4
    rgb, ccm = encs[0].seen[1], encs[1].seen[1]
    assert rgb.shape == ccm.shape == (1, 4, 3, 16, 16)
    # the maps see the splats: some foreground pixels, white/0.5 background elsewhere
    assert (rgb < 0.99).any() and (rgb > 0.99).any()
    assert (ccm != 0.5).any() and (ccm == 0.5).any()


@pytest.mark.parametrize("step", [0, "final"])
def test_nan_in_the_reconstruction_raises_sampling_error(step):
    from toys import GaussianToyReconstructor

    torch.manual_seed(0)
    rec = GaussianToyReconstructor()
    real = rec.reconstruct

    def reconstruct(images, cameras, sigma=None):
        cloud = real(images, cameras, sigma)
        if (sigma is None) == (step == "final"):
            cloud.opacities = torch.full_like(cloud.opacities, float("nan"))
        return cloud

    rec.reconstruct = reconstruct
    sampler = RecursiveSampler(ToyGenerator(), rec, [], SamplerConfig(steps=2, sigma_max=20.0), MapsConfig())
    where = "the final reconstruction" if step == "final" else r"step 0 \(sigma 20\)"
    with pytest.raises(SamplingError, match=rf"the reconstruction \(GaussianCloud opacities\) became NaN or infinite at {where}"):
        run(sampler)


def test_skipped_steps_zero_feeds_zero_maps_like_recon_every_n_steps():
    """The official validation sampler (``recon_every_n_steps = n``) sets the maps after step i
    to zeros when ``i % n != 0``; the maps after the other steps are that step's renders."""
    sampler, gen, rec, encs = make(mode="joint", feedback_every=2, skipped_steps="zero", final_reconstruction="last_step")
    infos = []
    result = run(sampler, callbacks=[infos.append])
    sig = karras_sigmas(STEPS, 0.002, 20.0, dtype=torch.float64)
    zeros = torch.zeros(1, 4, 3, 16, 16)
    for enc, kind in zip(encs, ("rgb", "ccm")):
        assert len(enc.seen) == STEPS and torch.equal(enc.seen[0], zeros)
        for i in range(STEPS - 1):
            if i % 2 == 0:
                out = infos[i].representation.render(toy_cameras(), 16, 16, background=1.0)
                expected = feedback_maps(out, toy_cameras(), ["rgb", "ccm"], MapsConfig())[kind]
                assert expected.any() and torch.allclose(enc.seen[i + 1], expected)
            else:
                assert torch.equal(enc.seen[i + 1], zeros), i
    # the final 3D result is the reconstruction of the last step's x0 although no feedback was due
    assert not infos[-1].feedback
    assert rec.calls[-1]["sigma"].item() == pytest.approx(float(sig[STEPS - 1]), rel=1e-6)
    assert torch.allclose(rec.calls[-1]["images"], infos[-1].x0[:, [0, 2]])
    assert result.representation is infos[-1].representation
    assert len(rec.calls) == STEPS // 2 + 1
    # "keep" (the default) differs: the maps of step 0 are still seen at step 2
    keep, _, _, keep_encs = make(mode="joint", feedback_every=2)
    run(keep)
    assert len(keep_encs[0].seen) == 1 + STEPS // 2 and keep_encs[0].seen[1].any()
