"""SVD generator: reproductions of the official code's runtime behaviour (issue 10).

``cfg_time_context: official`` reproduces the temporal cross-attention context of diffusers
0.25.0, the version pinned by the official code's requirements.txt. The reference below,
:func:`_forward_diffusers_0_25`, is an independent re-statement of that version's
``TransformerSpatioTemporalModel.forward`` (src/diffusers/models/transformer_temporal.py at
tag v0.25.0), which builds the context as::

    time_context_first_timestep = time_context[None, :].reshape(batch_size, num_frames, -1, C)[:, 0]
    time_context = time_context_first_timestep[None, :].broadcast_to(height * width, batch_size, 1, C)
    time_context = time_context.reshape(height * width * batch_size, 1, C)

The rest of that forward is the same as in the diffusers we run (norm, proj_in, frame
embedding, spatial block, temporal block, AlphaBlender mixer, proj_out, residual).
"""

from __future__ import annotations

import copy
import types

import pytest
import torch

from ouroboros_core.cameras import Cameras
from ouroboros_plugins.generators.svd import SPEC

torch.set_num_threads(2)


def _forward_diffusers_0_25(self, hidden_states, encoder_hidden_states=None, image_only_indicator=None, return_dict=True):
    """TransformerSpatioTemporalModel.forward as diffusers 0.25.0 computed it (see module docstring)."""
    batch_frames, _, height, width = hidden_states.shape
    num_frames = image_only_indicator.shape[-1]
    batch_size = batch_frames // num_frames
    C = encoder_hidden_states.shape[-1]
    first = encoder_hidden_states[None, :].reshape(batch_size, num_frames, -1, C)[:, 0]
    time_context = first[None, :].broadcast_to(height * width, batch_size, 1, C).reshape(height * width * batch_size, 1, C)

    residual = hidden_states
    hidden_states = self.norm(hidden_states)
    inner_dim = hidden_states.shape[1]
    hidden_states = hidden_states.permute(0, 2, 3, 1).reshape(batch_frames, height * width, inner_dim)
    hidden_states = self.proj_in(hidden_states)
    frame_ids = torch.arange(num_frames, device=hidden_states.device).repeat(batch_size, 1).reshape(-1)
    emb = self.time_pos_embed(self.time_proj(frame_ids).to(hidden_states.dtype))[:, None, :]
    for block, temporal_block in zip(self.transformer_blocks, self.temporal_transformer_blocks):
        hidden_states = block(hidden_states, encoder_hidden_states=encoder_hidden_states)
        mix = temporal_block(hidden_states + emb, num_frames=num_frames, encoder_hidden_states=time_context)
        hidden_states = self.time_mixer(x_spatial=hidden_states, x_temporal=mix, image_only_indicator=image_only_indicator)
    hidden_states = self.proj_out(hidden_states)
    hidden_states = hidden_states.reshape(batch_frames, height, width, inner_dim).permute(0, 3, 1, 2).contiguous()
    output = hidden_states + residual
    assert not return_dict
    return (output,)


def _generators():
    """(official, correct, diffusers-0.25 reference): the same tiny weights three ways."""
    torch.manual_seed(0)
    correct = SPEC.build({"cfg_time_context": "correct"}, preset="tiny-official").eval()
    official = SPEC.build(None, preset="tiny-official").eval()
    assert official.config.cfg_time_context == "official"
    official.load_state_dict(correct.state_dict())
    reference = copy.deepcopy(correct)
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    patched = 0
    for module in reference.unet.modules():
        if isinstance(module, TransformerSpatioTemporalModel):
            module.forward = types.MethodType(_forward_diffusers_0_25, module)
            patched += 1
    assert patched >= 2  # down block 0 and the mid block ... of the tiny UNet
    return official, correct, reference


@pytest.fixture(scope="module")
def gens():
    return _generators()


def _unet_inputs(gen, batch: int, seed: int = 0):
    """Random UNet inputs for ``batch`` objects of 8 frames with a distinct embedding each."""
    g = torch.Generator().manual_seed(seed)
    V, L = gen.config.num_views, gen.config.latent_size
    cfg = gen.config.unet
    sample = torch.randn(batch, V, cfg["in_channels"], L, L, generator=g)
    embeds = torch.randn(batch, 1, cfg["cross_attention_dim"], generator=g)
    time_ids = torch.tensor([[6.0, 127.0, 0.02]]).repeat(batch, 1)
    t = torch.full((batch,), 0.3)
    return sample, t, embeds, time_ids


def _unet(gen, inputs):
    sample, t, embeds, time_ids = inputs
    with torch.no_grad():
        return gen.unet(sample, t, encoder_hidden_states=embeds, added_time_ids=time_ids, return_dict=False)[0]


@pytest.mark.parametrize("batch", [2, 4])
def test_official_time_context_matches_diffusers_0_25(gens, batch):
    official, correct, reference = gens
    inputs = _unet_inputs(official, batch)
    out_o, out_c, out_r = _unet(official, inputs), _unet(correct, inputs), _unet(reference, inputs)
    assert torch.allclose(out_o, out_r, atol=1e-6, rtol=0), (out_o - out_r).abs().max()
    # and the two orderings really differ at this batch size
    assert (out_o - out_c).abs().max() > 1e-3


def test_batch_one_is_bit_identical(gens):
    official, correct, reference = gens
    inputs = _unet_inputs(official, 1)
    assert torch.equal(_unet(official, inputs), _unet(correct, inputs))
    # an unguided generator step (one object, no CFG pair) is identical too
    ctx = official.prepare(torch.rand(1, 3, 32, 32), Cameras.official(), generator=torch.Generator().manual_seed(1), guidance=(1.0, 1.0))
    x = torch.randn(ctx.latent_shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(official.denoise(x, torch.tensor([3.0]), ctx), correct.denoise(x, torch.tensor([3.0]), ctx))


def test_each_temporal_row_reads_the_context_of_row_mod_batch(gens):
    """What the hook hands to the temporal cross-attention, row by row, at batch 2 (CFG)."""
    official, _, _ = gens
    seen = []
    block = official.unet.down_blocks[0].attentions[0].temporal_transformer_blocks[0]
    handle = block.attn2.register_forward_pre_hook(lambda m, a, k: seen.append(k["encoder_hidden_states"]), with_kwargs=True)
    inputs = _unet_inputs(official, 2)
    embeds = inputs[2].clone()
    embeds[0] = 0  # the unconditional half of the official CFG pair
    try:
        _unet(official, (inputs[0], inputs[1], embeds, inputs[3]))
    finally:
        handle.remove()
    (context,) = seen
    hw = official.config.latent_size**2
    assert context.shape == (2 * hw, 1, embeds.shape[-1])
    for k in range(2 * hw):
        assert torch.equal(context[k, 0], embeds[k % 2, 0]), k
    # so each CFG half sees zeros at its even rows and the image embedding at its odd rows
    assert torch.equal(context[:hw:2], torch.zeros_like(context[:hw:2]))
    assert torch.equal(context[hw + 1 :: 2, 0], embeds[1, 0].expand(hw // 2, -1))


@pytest.mark.parametrize("objects", [1, 2])
def test_guided_step_matches_diffusers_0_25(gens, objects):
    """A guided x0 (one UNet call on [uncond, cond], so UNet batch 2·objects)."""
    official, correct, reference = gens
    image = torch.rand(objects, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    ctx = official.prepare(image, Cameras.official(objects), generator=torch.Generator().manual_seed(1))
    assert ctx.data["guidance"] is not None
    x = torch.randn(ctx.latent_shape, generator=torch.Generator().manual_seed(2))
    S, V = official.config.image_size, official.config.num_views
    fb = [torch.randn(objects, V, s.channels, S // s.stride, S // s.stride, generator=torch.Generator().manual_seed(9)) for s in official.feedback_slots]
    s = torch.tensor([5.0])
    with torch.no_grad():
        x0_o, x0_c, x0_r = (g.denoise(x, s, ctx, fb) for g in (official, correct, reference))
    assert torch.allclose(x0_o, x0_r, atol=1e-5, rtol=0)
    rel = ((x0_o - x0_c).abs().max() / x0_c.abs().max()).item()
    assert rel > 1e-3


def test_the_published_file_is_read_once_for_the_generator_and_both_adapters(tmp_path, monkeypatch):
    """mv_model_unet.pth holds the UNet, the Plücker MLPs and both adapters: the generator and
    the two feedback encoders that load from it read it once (memory-mapped), with the same
    result as separate reads; a changed file is read again."""
    from ouroboros_core import weights as weights_module
    from ouroboros_plugins.feedback import SPEC as ADAPTER
    from ouroboros_plugins.generators.svd.weights import official_state_dict

    torch.manual_seed(0)
    ref = SPEC.build(None, preset="tiny-official")
    encoders = [ADAPTER.build({"map_kind": k}, preset="tiny") for k in ("rgb", "ccm")]
    path = tmp_path / "mv_model_unet.pth"
    torch.save(official_state_dict(ref, encoders), path)
    base = tmp_path / "base"
    ref.save_pretrained(str(base))

    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: loads.append(str(f)) or real_load(f, *a, **k))
    weights_module._MMAP_CACHE.clear()
    gen = SPEC.build({"base_weights": str(base)}, preset="tiny-official")
    gen.load_weights(str(path))
    loaded = [ADAPTER.build({"map_kind": k}, preset="tiny") for k in ("rgb", "ccm")]
    for enc in loaded:
        enc.load_weights(str(path))
    assert loads.count(str(path)) == 1
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in gen.state_dict().items())
    for enc, expected in zip(loaded, encoders):
        assert all(torch.equal(v, expected.state_dict()[k]) for k, v in enc.state_dict().items())
    # the cached dict is not handed out itself: a caller that edits its copy changes nothing
    first = weights_module.read_state_dict(path)
    first.clear()
    assert len(weights_module.read_state_dict(path)) > 0 and loads.count(str(path)) == 1
    # a rewritten file (new size / mtime) is read again
    torch.save({"x": torch.zeros(3)}, path)
    assert list(weights_module.read_state_dict(path)) == ["x"] and loads.count(str(path)) == 2


def test_training_latents_are_posterior_samples_and_inference_uses_the_mode():
    """The official trainer encodes the target views and the condition image with
    ``latent_dist.sample()`` (mean + std·eps); inference uses the mode (the mean)."""
    torch.manual_seed(0)
    gen = SPEC.build(None, preset="tiny")
    assert gen.config.train_latents == "sample"
    images = torch.rand(1, 8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    x = images.flatten(0, 1) * 2 - 1
    with torch.no_grad():
        dist = gen.vae.encode(x).latent_dist
        gen.eval()
        assert torch.equal(gen.encode(images)[0], dist.mode() * 0.18215)
        gen.train()
        torch.manual_seed(5)
        sampled = gen.encode(images)[0]
        torch.manual_seed(5)
        eps = torch.randn(dist.mean.shape)
        torch.testing.assert_close(sampled, (dist.mean + dist.std * eps) * 0.18215)
        assert (sampled - dist.mode() * 0.18215).abs().max() > 1e-3
        # the condition latent of training_context too, drawn with the trainer's generator
        gen.config.cond_dropout = 0.0
        a = gen.training_context(images, Cameras.official(), torch.Generator().manual_seed(2)).data["cond_latent"]
        b = gen.training_context(images, Cameras.official(), torch.Generator().manual_seed(2)).data["cond_latent"]
        gen.config.train_latents = "mode"
        c = gen.training_context(images, Cameras.official(), torch.Generator().manual_seed(2)).data["cond_latent"]
    assert torch.equal(a, b)  # reproducible from the generator
    assert (a - c).abs().max() > 1e-3
