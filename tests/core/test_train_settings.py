"""Training settings of issue 11: gradient checkpointing, learning-rate warm-up and schedule,
DeepSpeed's constraints. Real reference plugins at small explicit sizes (tests/e2e/small_recipe.py),
toy components (toys.py) where the plugin does not matter."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from ouroboros_core.errors import RecipeError
from ouroboros_core.recipe import LossConfig, MapsConfig, TrainerConfig, load_recipe
from ouroboros_core.trainer import JointModel, JointTrainer, apply_gradient_checkpointing, lr_factor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from small_recipe import write_small_recipe  # noqa: E402
from test_trainer import components, config, fresh_accelerate_state, toy_batch  # noqa: E402,F401

CHECKPOINTED = ["generator.unet", "reconstructor.unet.*.nets.?", "reconstructor.unet.*.attns.?"]


def _small_model(tmp_path, checkpointing: list[str]):
    from ouroboros_core.build import build_components

    recipe = load_recipe(write_small_recipe(tmp_path))
    parts = build_components(recipe, device=torch.device("cpu"), dtype=torch.float32)
    cfg = TrainerConfig(loss=LossConfig(lpips_weight=0.0), gradient_checkpointing=checkpointing)
    model = JointModel(parts.generator, parts.reconstructor, parts.encoders, cfg, recipe.model.maps)
    chosen = apply_gradient_checkpointing(model.components, checkpointing) if checkpointing else []
    return model, chosen


def _pass(model: JointModel, calls: list[str]):
    """One joint training pass with feedback on a fixed batch; losses and every gradient."""
    from ouroboros_core.cameras import Cameras

    model.train()
    g = torch.Generator().manual_seed(3)
    images = torch.rand(1, 8, 3, 32, 32, generator=g)
    alpha = torch.ones(1, 8, 1, 32, 32)
    cams = Cameras.official(1)
    hooks = [
        model.get_submodule(name).register_forward_hook(lambda *_, name=name: calls.append(name))
        for name in ("components.generator.unet.down_blocks.0.resnets.0.spatial_res_block.conv1", "components.reconstructor.unet.down_blocks.0.nets.0.conv1")
    ]
    torch.manual_seed(11)
    losses = model(images, alpha, cams, torch.tensor([1.3]), True, torch.Generator().manual_seed(5))
    losses["total"].backward()
    for h in hooks:
        h.remove()
    grads = {n: p.grad.clone() for n, p in model.components.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def test_gradient_checkpointing_keeps_losses_and_gradients_and_recomputes(tmp_path):
    plain, _ = _small_model(tmp_path, [])
    ckpt, chosen = _small_model(tmp_path, CHECKPOINTED)
    assert "generator.unet" in chosen and "reconstructor.unet.down_blocks.0.nets.0" in chosen
    assert ckpt.components["generator"].unet.is_gradient_checkpointing  # diffusers' own switch
    assert not plain.components["generator"].unet.is_gradient_checkpointing
    calls_plain, calls_ckpt = [], []
    losses_a, grads_a = _pass(plain, calls_plain)
    losses_b, grads_b = _pass(ckpt, calls_ckpt)
    # the checkpointed blocks ran again in the backward pass: the UNet's second (feedback) pass,
    # whose loss is the diffusion loss (pass 1 feeds only a detached decode), and both LGM
    # reconstructions (noisy and clean)
    gen, rec = "components.generator.unet.down_blocks.0.resnets.0.spatial_res_block.conv1", "components.reconstructor.unet.down_blocks.0.nets.0.conv1"
    assert (calls_plain.count(gen), calls_plain.count(rec)) == (2, 2)
    assert (calls_ckpt.count(gen), calls_ckpt.count(rec)) == (3, 4)
    assert losses_a.keys() == losses_b.keys()
    for key in losses_a:
        torch.testing.assert_close(losses_b[key], losses_a[key], rtol=1e-6, atol=1e-7)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 50
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-7, msg=name)


def test_gradient_checkpointing_pattern_matching_nothing_is_a_recipe_error():
    gen, rec, enc = components()
    model = torch.nn.ModuleDict({"generator": gen, "reconstructor": rec, "feedback": torch.nn.ModuleList(enc)})
    with pytest.raises(RecipeError, match=r"trainer.gradient_checkpointing: 'generatr.unet' matches no module"):
        apply_gradient_checkpointing(model, ["generatr.unet"])


def test_lr_factor_warmup_then_schedule():
    cfg = lambda **kw: TrainerConfig(max_steps=14, **kw)  # noqa: E731
    assert lr_factor(cfg(), 0) is None  # constant without warm-up: the optimiser's rates stay untouched
    assert [lr_factor(cfg(lr_warmup_steps=4), s) for s in (0, 1, 3, 4, 13)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    lin = cfg(lr_schedule="linear", lr_warmup_steps=4, lr_min_ratio=0.1)
    assert lr_factor(lin, 4) == 1.0 and lr_factor(lin, 9) == pytest.approx(1 - 0.9 * 0.5)
    assert lr_factor(lin, 14) == pytest.approx(0.1) and lr_factor(lin, 30) == pytest.approx(0.1)
    cos = cfg(lr_schedule="cosine", lr_warmup_steps=4)
    assert lr_factor(cos, 9) == pytest.approx(0.5) and lr_factor(cos, 14) == pytest.approx(0.0, abs=1e-12)


def test_warmup_sets_the_rate_the_optimiser_uses():
    """Adam's first update moves every parameter with a gradient by lr (times the sign): the
    step taken is read off the weights. The reported lr follows the schedule, group scales kept."""
    kw = dict(lr=1e-2, lr_warmup_steps=4, lr_schedule="cosine", max_steps=8, weight_decay=0.0, lr_scale={"reconstructor": 0.5})
    t = JointTrainer(*components(0), config(**kw), MapsConfig(), seed=1, device="cpu")
    seen = []
    before = t.components["generator"].offset.detach().clone()
    t.train([toy_batch()], max_steps=1, callbacks=[lambda info: seen.append(info.lr)])
    moved = (t.components["generator"].offset.detach() - before).abs()
    assert float(moved) == pytest.approx(1e-2 * 0.25, rel=1e-3)
    t.train([toy_batch()], max_steps=6, callbacks=[lambda info: seen.append(info.lr)])
    assert seen == pytest.approx([1e-2 * lr_factor(t.config, s) for s in range(6)])
    by_scale = {g["lr_scale"]: g["lr"] for g in t.optimizer.param_groups}
    assert by_scale[0.5] == pytest.approx(0.5 * by_scale[1.0]) and by_scale[1.0] == pytest.approx(1e-2 * lr_factor(t.config, 5))


def test_deepspeed_refuses_the_trainers_own_accumulation_and_fills_the_micro_batch():
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    from ouroboros_core.trainer import _configure_deepspeed

    class Launched:  # what accelerate's state looks like under `accelerate launch` with DeepSpeed
        distributed_type = DistributedType.DEEPSPEED
        num_processes = 8

        def __init__(self):
            self.state = type("State", (), {"deepspeed_plugin": DeepSpeedPlugin(zero_stage=2)})()

    with pytest.raises(RecipeError, match="trainer.grad_accum is 32; under DeepSpeed it must be 1"):
        _configure_deepspeed(Launched(), TrainerConfig(grad_accum=32))
    acc = Launched()
    _configure_deepspeed(acc, TrainerConfig(batch_size=2))
    ds = acc.state.deepspeed_plugin.deepspeed_config
    assert (ds["train_micro_batch_size_per_gpu"], ds["train_batch_size"], ds["zero_optimization"]["stage"]) == (2, 16, 2)
