"""Every speed knob of a recipe has an observable effect on a real run (not only "it runs"):
fewer reconstructions, fewer decoded frames, another solver, another module dtype.

The recipe is explicit (``small_recipe.py``); reconstructor, generator and VAE calls are
counted by spies on the loaded components, independently of the sampler's own counters.
"""

from __future__ import annotations

import pytest
import torch

from ouroboros_core.edm import karras_sigmas
from ouroboros_core.pipeline import ImageTo3DPipeline
from tests.e2e.small_recipe import write_small_recipe
from tests.e2e.test_generate import object_rgba

STEPS = 4


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory):
    return write_small_recipe(tmp_path_factory.mktemp("recipe"))


class Spies:
    """Counts reconstructor and generator calls and the frames the VAE decoder decodes."""

    def __init__(self, pipe: ImageTo3DPipeline):
        self.reconstruct_sigmas: list[float | None] = []
        self.denoise_calls = 0
        self.decoded_frames: list[int] = []
        self.unet_dtypes: list[torch.dtype] = []
        rec, gen = pipe.reconstructor, pipe.generator
        real_reconstruct, real_denoise = rec.reconstruct, gen.denoise

        def reconstruct(images, cameras, sigma=None):
            self.reconstruct_sigmas.append(None if sigma is None else float(sigma.flatten()[0]))
            return real_reconstruct(images, cameras, sigma)

        def denoise(*args, **kwargs):
            self.denoise_calls += 1
            return real_denoise(*args, **kwargs)

        rec.reconstruct, gen.denoise = reconstruct, denoise
        gen.vae.decoder.register_forward_pre_hook(lambda m, args: self.decoded_frames.append(args[0].shape[0]))
        gen.unet.register_forward_pre_hook(lambda m, args, kwargs: self.unet_dtypes.append((args[0] if args else kwargs["sample"]).dtype), with_kwargs=True)


def run(recipe_path, *overrides: str):
    pipe = ImageTo3DPipeline.from_recipe(recipe_path, [f"sampler.steps={STEPS}", *overrides])
    spies = Spies(pipe)
    return pipe(object_rgba(), seed=0), spies, pipe


@pytest.fixture(scope="module")
def baseline(recipe_path):
    return run(recipe_path)


def sigmas(pipe) -> list[float]:
    c = pipe.recipe.model.sampler
    return [float(s) for s in karras_sigmas(c.steps, c.sigma_min, c.sigma_max, c.rho, dtype=torch.float64)[:-1]]


def test_baseline_reconstructs_every_step_then_once_more(baseline):
    result, spies, pipe = baseline
    assert spies.reconstruct_sigmas[:-1] == pytest.approx(sigmas(pipe), rel=1e-3) and spies.reconstruct_sigmas[-1] is None
    assert result.manifest["num_reconstructions"] == STEPS + 1 == len(spies.reconstruct_sigmas)
    assert spies.denoise_calls == STEPS
    assert spies.decoded_frames == [8] * (STEPS + 1)  # all views decoded at every step and at the end
    assert set(spies.unet_dtypes) == {torch.float32}


def test_feedback_every_reconstructs_only_every_kth_step(recipe_path, baseline):
    result, spies, pipe = run(recipe_path, "sampler.feedback_every=2")
    due = sigmas(pipe)[::2]
    assert spies.reconstruct_sigmas[:-1] == pytest.approx(due, rel=1e-3) and spies.reconstruct_sigmas[-1] is None
    assert result.manifest["num_reconstructions"] == len(due) + 1 == STEPS // 2 + 1
    assert spies.decoded_frames == [8] * (len(due) + 1)
    assert not torch.equal(result.views, baseline[0].views)  # stale maps at odd steps change the result


def test_feedback_sigma_range_reconstructs_only_inside_the_window(recipe_path):
    pipe = ImageTo3DPipeline.from_recipe(recipe_path, [f"sampler.steps={STEPS}"])
    all_sigmas = sigmas(pipe)
    low, high = all_sigmas[2] * 0.99, all_sigmas[1] * 1.01  # exactly steps 1 and 2
    result, spies, _ = run(recipe_path, f"sampler.feedback_sigma_range=[{low}, {high}]")
    assert spies.reconstruct_sigmas[:-1] == pytest.approx(all_sigmas[1:3], rel=1e-3)
    assert result.manifest["num_reconstructions"] == 3


def test_decode_only_input_views_decodes_fewer_frames(recipe_path):
    result, spies, pipe = run(recipe_path, "sampler.decode_only_input_views=true")
    # the 4 input views of the reconstructor at each step, all 8 views once at the end
    assert spies.decoded_frames == [4] * STEPS + [8]
    assert result.views.shape[0] == 8 and len(spies.reconstruct_sigmas) == STEPS + 1


def test_heun_evaluates_the_generator_twice_per_step_and_changes_the_result(recipe_path, baseline):
    result, spies, _ = run(recipe_path, "sampler.solver=heun")
    assert spies.denoise_calls == 2 * STEPS - 1  # no correction at the last step (sigma_next = 0)
    assert len(spies.reconstruct_sigmas) == STEPS + 1  # feedback once per step, not per evaluation
    assert (result.views - baseline[0].views).abs().max() > 1e-3  # heun is not euler


def test_bf16_runs_every_module_in_bf16(recipe_path, baseline):
    result, spies, pipe = run(recipe_path, "dtype=bf16")
    for name, module in [("generator", pipe.generator), ("reconstructor", pipe.reconstructor), *((f"feedback {i}", e) for i, e in enumerate(pipe.encoders))]:
        dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
        assert dtypes == {torch.bfloat16}, f"{name}: parameters in {dtypes} under dtype bf16"
    assert spies.unet_dtypes and set(spies.unet_dtypes) == {torch.bfloat16}  # the UNet computed in bf16
    assert result.views.dtype == torch.float32 and torch.isfinite(result.views).all()
    assert result.manifest["dtype"] == "bf16"
    diff = (result.views - baseline[0].views).abs()
    assert 0 < diff.max() and diff.mean() < 0.1  # rounding differences, not another result
