"""Half precision of the SVD generator: autocast over fp32 weights as the official script
(reference official-ouroboros3d.md §1.1: weights loaded in fp32, the sampling loop under
``torch.amp.autocast(float16)``, the conditioning encoded before it), and ``force_upcast``
when the modules are cast instead. CPU autocast: bf16 and fp16 both run in torch 2.14."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ouroboros_core.cameras import Cameras
from ouroboros_core.edm import karras_sigmas
from ouroboros_core.pipeline import ImageTo3DPipeline
from ouroboros_plugins.generators.svd import SPEC
from tests.e2e.test_generate import object_rgba

TINY_RANDOM = str(Path(__file__).resolve().parents[1] / "recipes" / "tiny-random.yaml")


def _gen(seed: int = 0, dtype: torch.dtype = torch.float32, **config):
    torch.manual_seed(seed)
    return SPEC.build(config, preset="tiny-official").to(dtype).eval()


def _prepare(gen, seed: int = 1):
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return gen.prepare(image, Cameras.official(), generator=torch.Generator().manual_seed(7))


def _record_outputs(modules: dict, seen: dict) -> list:
    """Forward hooks recording each module's output dtype (the dtype it computed in)."""

    def hook(name):
        def record(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            seen.setdefault(name, set()).add(getattr(out, "sample", out).dtype)

        return record

    return [m.register_forward_hook(hook(name)) for name, m in modules.items()]


def test_autocast_bf16_pipeline_keeps_fp32_weights_and_fp32_conditioning():
    pipe = ImageTo3DPipeline.from_recipe(TINY_RANDOM, ["sampler.steps=1", "dtype=bf16", "autocast=true"])
    for module in (pipe.generator, pipe.reconstructor, *pipe.encoders):
        assert {p.dtype for p in module.parameters()} == {torch.float32}, type(module).__name__
    gen = pipe.generator
    seen: dict = {}
    inputs: dict = {}
    handles = _record_outputs(
        {
            "vae encoder": gen.vae.encoder,
            "clip projection": gen.image_encoder.visual_projection,
            "unet conv_in": gen.unet.conv_in,
            "vae decoder": gen.vae.decoder.conv_in,
            "lgm": pipe.reconstructor.conv,
            "adapter": pipe.encoders[0].conv_in,
        },
        seen,
    )
    for name, module in (("vae encoder", gen.vae.encoder), ("clip", gen.image_encoder)):
        handles.append(module.register_forward_pre_hook(
            lambda m, args, kwargs, name=name: inputs.setdefault(name, set()).add((list(args) + list(kwargs.values()))[0].dtype),
            with_kwargs=True,
        ))
    try:
        result = pipe(object_rgba(), seed=0)
    finally:
        for h in handles:
            h.remove()
    # the conditioning encoders saw fp32 inputs and computed in fp32 (under autocast a conv or
    # linear layer returns bf16); the loop's models computed in bf16
    assert inputs == {"vae encoder": {torch.float32}, "clip": {torch.float32}}
    assert seen["vae encoder"] == seen["clip projection"] == {torch.float32}
    for name in ("unet conv_in", "vae decoder", "lgm", "adapter"):
        assert seen[name] == {torch.bfloat16}, f"{name} computed in {seen[name]}"
    assert result.views.dtype == torch.float32 and torch.isfinite(result.views).all()
    assert result.manifest["dtype"] == "bf16" and result.manifest["autocast"] is True


def test_conditioning_ignores_a_callers_autocast():
    """A trainer's mixed precision (or the sampler's autocast) leaves CLIP, the VAE encoder
    and the camera features bit-identical to fp32."""
    gen = _gen()
    with torch.no_grad():
        ref = _prepare(gen)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = _prepare(gen)
            latents = gen.encode(torch.rand(1, 2, 3, 32, 32, generator=torch.Generator().manual_seed(3)))
    assert latents.dtype == torch.float32
    for key in ("image_embeds", "cond_latent"):
        assert amp.data[key].dtype == torch.float32 and torch.equal(amp.data[key], ref.data[key]), key
    for a, b in zip(amp.data["camera_features"], ref.data["camera_features"]):
        assert a.dtype == torch.float32 and torch.equal(a, b)


#: Tolerances of one guided step's x0 against fp32, as relative RMS ``||dx0|| / ||x0||``. Measured
#: on this tiny-official model at 32², CFG ramp 1 -> 3, sigma 700 / 135 / 15.6 / 0.68: by
#: benchmarks/precision.py (3 weight seeds, with feedback) bf16 1.9e-2 .. 4.2e-2, fp16 2.3e-3 ..
#: 5.5e-3 (README); in this test's set-up (6 seeds, no feedback) bf16 1.7e-2 .. 4.2e-2, fp16
#: 1.8e-3 .. 5.4e-3 (8x less: 3 more mantissa bits). The bounds are about twice the worst; a real
#: defect is far larger (diffusers 0.25's context ordering, cfg_time_context, moves x0 by 20-30 %).
STEP_TOLERANCE = {torch.bfloat16: 0.08, torch.float16: 0.01}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_guided_step_is_close_to_fp32(dtype):
    sigmas = karras_sigmas(25, 0.002, 700.0, dtype=torch.float64)
    for seed in (0, 1):
        gen = _gen(seed)
        with torch.no_grad():
            ctx = _prepare(gen, seed=100 + seed)
            noise = torch.randn(ctx.latent_shape, generator=torch.Generator().manual_seed(200 + seed))
            for s in (float(sigmas[0]), float(sigmas[12])):
                x, sigma = noise * s, torch.tensor([s])
                ref = gen.denoise(x, sigma, ctx)
                with torch.autocast("cpu", dtype=dtype):
                    x0 = gen.denoise(x, sigma, ctx)
                drift = float((x0 - ref).norm() / ref.norm())
                assert x0.dtype == torch.float32
                assert STEP_TOLERANCE[dtype] / 100 < drift < STEP_TOLERANCE[dtype], f"seed {seed} sigma {s:.4g}: {drift:.2e}"
    assert {p.dtype for p in gen.parameters()} == {torch.float32}


def test_fp16_cast_upcasts_the_vae_encoder_when_force_upcast_is_set():
    """diffusers' SVD pipeline rule: an fp16 VAE with ``force_upcast`` encodes in fp32 (and
    decodes in fp16); bf16 and ``force_upcast: false`` encode in the cast dtype."""
    image = torch.rand(1, 2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    reference = _gen()
    with torch.no_grad():
        fp32_latents = reference.encode(image)
    for dtype, force_upcast, computes_in in (
        (torch.float16, True, torch.float32),
        (torch.float16, False, torch.float16),
        (torch.bfloat16, True, torch.bfloat16),
    ):
        gen = _gen(dtype=dtype, vae={**SPEC.make_config(None, "tiny-official").vae, "force_upcast": force_upcast})
        seen: set = set()  # (input dtype, weight dtype) of the encoder's first convolution
        handle = gen.vae.encoder.conv_in.register_forward_pre_hook(lambda m, args: seen.add((args[0].dtype, m.weight.dtype)))
        with torch.no_grad():
            latents = gen.encode(image)
            _prepare(gen)
        handle.remove()
        assert seen == {(computes_in, computes_in)}, (dtype, force_upcast, seen)
        assert {p.dtype for p in gen.vae.encoder.parameters()} == {dtype}  # cast back after the call
        assert latents.dtype == torch.float32
        if computes_in == torch.float32:  # only the weights' fp16 rounding is left
            assert torch.allclose(latents, fp32_latents, rtol=0, atol=1e-2 * float(fp32_latents.abs().max()))
