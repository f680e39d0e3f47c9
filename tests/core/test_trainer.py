"""The joint trainer (Algorithm 1) with the toy components of ``toys.py``."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from ouroboros_core.errors import RecipeError, WeightsError
from ouroboros_core.recipe import LossConfig, MapsConfig, TrainerConfig
from ouroboros_core.trainer import JointModel, JointTrainer, parameter_groups

from toys import SphereCloud, ToyEncoder, ToyEncoderConfig, ToyGenerator, ToyGeneratorConfig, ToyReconstructor, toy_cameras


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps a process-wide state; each test makes its own Accelerator."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def toy_batch(batch_size: int = 2, seed: int = 0, size: int = 16) -> dict:
    """Ground truth: a sphere of some colour and radius 0.45, seen by the 4 toy cameras."""
    g = torch.Generator().manual_seed(seed)
    color = 0.2 + 0.6 * torch.rand(batch_size, 3, generator=g)
    cams = toy_cameras(batch_size)
    out = SphereCloud(color, torch.full((batch_size,), 0.45), softness=0.01).render(cams, size, size)
    return {"images": out.rgb.detach(), "alpha": out.alpha.detach(), "cameras": cams}


class ToyData(torch.utils.data.Dataset):
    """Items in the dataset format (per-object tensors), batched by collate_multiview."""

    def __init__(self, n: int = 6):
        self.items = []
        for i in range(n):
            b = toy_batch(1, seed=i)
            self.items.append({"id": str(i), "images": b["images"][0], "alpha": b["alpha"][0], "c2w": b["cameras"].c2w[0], "intrinsics": b["cameras"].intrinsics[0]})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def components(seed: int = 0, kinds=("rgb", "ccm"), size: int = 16):
    torch.manual_seed(seed)
    gen = ToyGenerator(ToyGeneratorConfig(image_size=size))
    return gen, ToyReconstructor(), [ToyEncoder(ToyEncoderConfig(map_kind=k)) for k in kinds]


def config(**kwargs) -> TrainerConfig:
    base = dict(lr=1e-2, loss=LossConfig(lpips_weight=0.0), checkpoint_every=0, log_every=0, grad_clip=None)
    base.update(kwargs)
    return TrainerConfig(**base)


def trainer(seed: int = 0, component_seed: int = 0, kinds=("rgb", "ccm"), size: int = 16, **kwargs) -> JointTrainer:
    return JointTrainer(*components(component_seed, kinds, size), config(**kwargs), MapsConfig(), seed=seed, device="cpu")


# ---------------------------------------------------------------------- parameter groups
def test_parameter_groups_prefixes_scales_and_errors():
    gen, rec, encs = components()
    mods = torch.nn.ModuleDict({"generator": gen, "reconstructor": rec, "feedback": torch.nn.ModuleList(encs)})
    rec.log_radius.requires_grad_(False)  # a component may freeze parts of itself
    groups = parameter_groups(mods, ["generator.offset", "reconstructor", "feedback.1"], 1e-3, {"reconstructor": 0.5, "feedback": 2.0})
    by_scale = {g["lr_scale"]: g for g in groups}
    assert {s: g["lr"] for s, g in by_scale.items()} == {1.0: 1e-3, 0.5: 5e-4, 2.0: 2e-3}
    assert by_scale[1.0]["params"] == [gen.offset]
    assert {id(p) for p in by_scale[0.5]["params"]} == {id(rec.color_gain), id(rec.color_bias), id(rec.sigma_weight)}
    assert {id(p) for p in by_scale[2.0]["params"]} == {id(p) for p in encs[1].parameters()}
    assert not gen.feedback_gain.requires_grad and not rec.log_radius.requires_grad
    assert not any(p.requires_grad for p in encs[0].parameters())
    with pytest.raises(RecipeError, match=r"trainer.trainable: 'generater' matches no parameter.*did you mean 'generator'"):
        parameter_groups(mods, ["generater"], 1e-3)
    with pytest.raises(RecipeError, match=r"trainer.lr_scale: 'feedback.7'"):
        parameter_groups(mods, ["feedback"], 1e-3, {"feedback.7": 0.1})
    # a recipe without feedback (feedback: []) but an inherited lr_scale for it: say so, not "did you mean 'feedback'"
    no_feedback = torch.nn.ModuleDict({"generator": gen, "reconstructor": rec, "feedback": torch.nn.ModuleList()})
    with pytest.raises(RecipeError) as err:
        parameter_groups(no_feedback, ["generator"], 1e-3, {"feedback": 5.0})
    assert "this recipe's feedback has no parameters" in str(err.value) and "trainer.lr_scale={}" in str(err.value)
    assert "did you mean" not in str(err.value)


def test_frozen_components_do_not_change():
    t = trainer(trainable=["reconstructor"])
    before = {n: p.detach().clone() for n, p in t.components.named_parameters()}
    batch = toy_batch()
    for _ in range(3):
        t.train_step([batch])
    for name, p in t.components.named_parameters():
        changed = not torch.equal(before[name], p)
        assert changed == name.startswith("reconstructor."), name


# ---------------------------------------------------------------------- the training pass
def test_pass_structure_and_gradients_reach_reconstructor_and_encoders():
    gen, rec, encs = components()
    for e in encs:
        e.record = True
    model = JointModel(gen, rec, encs, config(), MapsConfig())
    batch = toy_batch()
    losses = model(batch["images"], batch["alpha"], batch["cameras"], torch.tensor([0.5, 2.0]), True, torch.Generator().manual_seed(0))
    # pass 1 with zero maps, pass 2 with the maps rendered from the sigma reconstruction
    assert [c["feedback"] for c in gen.denoise_calls] == [True, True]
    assert not encs[0].seen[0].any() and encs[0].seen[1].any()
    assert [c["sigma"] is None for c in rec.calls] == [False, True]  # decoded x0 at sigma, then clean GT
    assert torch.allclose(rec.calls[1]["images"], batch["images"][:, [0, 2]])
    assert losses["feedback"].item() == 1.0
    assert torch.allclose(losses["total"], losses["diffusion"] + losses["recon"])
    assert torch.allclose(losses["recon"], (losses["recon_noisy"] + losses["recon_clean"]) / 2)
    losses["total"].backward()
    for module in (rec, *encs):
        for name, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert gen.feedback_gain.grad.abs() > 0 and gen.offset.grad.abs() > 0


def test_self_conditioning_maps_are_rendered_from_the_sigma_reconstruction():
    """Pass 2 sees the maps of the reconstruction made from decoded x0 at sigma, never those of
    the clean ground-truth reconstruction (that would leak ground truth into training and make
    training differ from inference). The toy reconstructor's two outputs are made to differ."""
    from ouroboros_core.maps import canonical_coordinate_map

    gen, rec, encs = components()
    with torch.no_grad():
        rec.sigma_weight.fill_(0.4)  # the colour depends on sigma: sigma and clean outputs differ
    for e in encs:
        e.record = True
    maps_config = MapsConfig(rgb_background=0.8)
    model = JointModel(gen, rec, encs, config(), maps_config)
    batch = toy_batch()
    sigma = torch.tensor([0.5, 2.0])
    model(batch["images"], batch["alpha"], batch["cameras"], sigma, True, torch.Generator().manual_seed(0))
    noisy_call, clean_call = rec.calls
    assert noisy_call["sigma"] is not None and clean_call["sigma"] is None

    def hand_maps(images, sig):
        """The toy's sphere, rebuilt from its formula, rendered at the generator's size."""
        t = torch.zeros(2) if sig is None else 0.25 * torch.log(sig)
        color = rec.color_gain * images.mean(dim=(1, 3, 4)) + rec.color_bias + rec.sigma_weight * t[:, None]
        out = SphereCloud(color.detach(), rec.log_radius.exp().detach().expand(2)).render(batch["cameras"], 16, 16, background=0.8)
        return out.rgb, canonical_coordinate_map(out.depth, out.alpha, batch["cameras"])

    rgb_sigma, ccm_sigma = hand_maps(noisy_call["images"], sigma)
    rgb_clean, _ = hand_maps(batch["images"][:, [0, 2]], None)
    assert (rgb_sigma - rgb_clean).abs().max() > 0.05  # the two reconstructions look different
    seen_rgb, seen_ccm = encs[0].seen[1], encs[1].seen[1]
    err, err_clean = float((seen_rgb - rgb_sigma).abs().max()), float((seen_rgb - rgb_clean).abs().max())
    assert err < 1e-5, (
        "self-conditioning pass 2 must see the RGB map rendered from the sigma reconstruction (decoded x0): "
        f"max error {err:.3g}; against the clean ground-truth reconstruction's render it is {err_clean:.3g}"
    )
    assert float((seen_ccm - ccm_sigma).abs().max()) < 1e-5, "pass 2's CCM must come from the sigma reconstruction's render"


@pytest.mark.parametrize("detach", [False, True])
def test_diffusion_loss_trains_reconstructor_through_feedback_unless_detached(detach):
    gen, rec, encs = components()
    model = JointModel(gen, rec, encs, config(detach_feedback=detach), MapsConfig())
    batch = toy_batch()
    losses = model(batch["images"], batch["alpha"], batch["cameras"], torch.tensor([0.5, 2.0]), True, torch.Generator().manual_seed(0))
    losses["diffusion"].backward()
    reached = rec.color_bias.grad is not None and rec.color_bias.grad.abs().sum() > 0
    assert reached != detach
    assert encs[0].convs[0].weight.grad.abs().sum() > 0


def test_without_feedback_the_first_pass_loss_is_used():
    gen, rec, encs = components()
    model = JointModel(gen, rec, encs, config(), MapsConfig())
    batch = toy_batch()
    losses = model(batch["images"], batch["alpha"], batch["cameras"], torch.tensor([1.0, 1.0]), False, torch.Generator().manual_seed(0))
    assert len(gen.denoise_calls) == 1 and losses["feedback"].item() == 0.0
    assert torch.equal(losses["diffusion"], losses["diffusion_pass1"])


def test_keep_first_pass_loss_averages_both_passes():
    batch = toy_batch()
    sigma = torch.tensor([0.7, 3.0])
    out = {}
    for keep in (False, True):
        gen, rec, encs = components()
        model = JointModel(gen, rec, encs, config(keep_first_pass_loss=keep), MapsConfig())
        out[keep] = model(batch["images"], batch["alpha"], batch["cameras"], sigma, True, torch.Generator().manual_seed(0))
    pass1, pass2 = out[False]["diffusion_pass1"], out[False]["diffusion"]
    assert not torch.allclose(pass1, pass2)
    assert torch.allclose(out[True]["diffusion"], (pass1 + pass2) / 2)


def toy_weighted_error(x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``lambda(sigma) (x0_hat - x0)^2`` per element for the toy generator, computed directly:
    its x0 estimate is ``0.5 + c (x - 0.5)`` with ``c = 0.25^2 / (0.25^2 + sigma^2)``, and the
    trainer draws eps from the generator it is handed (seed 0 here)."""
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    s = sigma.reshape(-1, 1, 1, 1, 1)
    x0_hat = 0.5 + 0.25**2 / (0.25**2 + s**2) * (x0 + s * eps - 0.5)
    return (s**2 + 0.25**2) / (s * 0.25) ** 2 * (x0_hat - x0) ** 2


def test_diffusion_loss_equals_weighted_x0_error():
    """With no encoders, one pass: mean(lambda(sigma) (x0_hat - x0)^2) against a direct computation."""
    gen, rec, _ = components()
    model = JointModel(gen, rec, [], config(), MapsConfig())
    batch = toy_batch()
    sigma = torch.tensor([0.5, 2.0])
    losses = model(batch["images"], batch["alpha"], batch["cameras"], sigma, True, torch.Generator().manual_seed(0))
    assert losses["diffusion"].item() == pytest.approx(toy_weighted_error(batch["images"], sigma).mean().item(), rel=1e-5)
    assert losses["feedback"].item() == 0.0


def test_balanced_diffusion_loss_weighs_object_and_background_halves_per_view():
    """diffusion_balance_foreground: per view, 1/2 mean over object pixels + 1/2 over the rest
    of lambda(sigma) (x0_hat - x0)^2, averaged here pixel by pixel."""
    gen, rec, _ = components()
    model = JointModel(gen, rec, [], config(diffusion_balance_foreground=True), MapsConfig())
    batch = toy_batch()
    sigma = torch.tensor([0.5, 2.0])
    losses = model(batch["images"], batch["alpha"], batch["cameras"], sigma, True, torch.Generator().manual_seed(0))
    error = toy_weighted_error(batch["images"], sigma).mean(2)  # (B, V, H, W)
    per_view = []
    for b in range(2):
        for v in range(error.shape[1]):
            obj = batch["alpha"][b, v, 0] > 0.5
            assert 0 < int(obj.sum()) < obj.numel()  # both halves present in this batch
            per_view.append(0.5 * error[b, v][obj].mean() + 0.5 * error[b, v][~obj].mean())
    expected = torch.stack(per_view).mean()
    assert losses["diffusion"].item() == pytest.approx(expected.item(), rel=1e-5)
    plain = JointModel(gen, rec, [], config(), MapsConfig())(
        batch["images"], batch["alpha"], batch["cameras"], sigma, True, torch.Generator().manual_seed(0)
    )
    assert plain["diffusion"].item() != pytest.approx(expected.item(), rel=1e-3)


def test_balanced_diffusion_loss_pools_alpha_to_the_latent_grid():
    """On a latent grid half the image's side a latent pixel is object when most of its 2x2
    image pixels are: 3 of 4 counts, 2 of 4 does not."""
    gen, rec, _ = components()
    model = JointModel(gen, rec, [], config(diffusion_balance_foreground=True), MapsConfig())
    alpha = torch.zeros(1, 1, 1, 4, 4)
    alpha[..., 0, 0] = alpha[..., 0, 1] = alpha[..., 1, 0] = 1.0  # top-left block: 3 of 4
    alpha[..., 2, 2] = alpha[..., 2, 3] = 1.0  # bottom-right block: 2 of 4
    mean = model._diffusion_mean(alpha, (2, 2))
    error = torch.tensor([[4.0, 1.0], [1.0, 1.0]]).reshape(1, 1, 1, 2, 2)
    # object: the top-left latent pixel alone (4); background: the other three (1)
    assert mean(error).item() == pytest.approx(0.5 * 4.0 + 0.5 * 1.0)


# ---------------------------------------------------------------------- the trainer
def test_feedback_probability_is_seeded_and_matches_config():
    n = 40
    batch = toy_batch(1, size=8)
    runs = {}
    for seed in (0, 0, 1):
        t = trainer(seed=seed, size=8, self_condition_prob=0.3, trainable=["feedback"])
        calls = t.components["generator"].denoise_calls
        seq = [t.train_step([batch])["feedback"] for _ in range(n)]
        assert len(calls) == n + sum(seq)  # a second denoising pass exactly on feedback steps
        runs.setdefault(seed, []).append(seq)
    assert runs[0][0] == runs[0][1]  # deterministic given the seed
    assert runs[0][0] != runs[1][0]
    for seq in (runs[0][0], runs[1][0]):
        # binomial(40, 0.3): mean 12, standard deviation 2.9; 3.5 SD bounds
        assert 2 <= sum(seq) <= 22
    # one draw per step from the trainer's own generator
    g = torch.Generator().manual_seed(0)
    assert runs[0][0] == [float(torch.rand((), generator=g) < 0.3) for _ in range(n)]


def test_loss_decreases_on_toy_problem():
    """Losses on a held-out object at fixed noise (so the comparison carries no sampling noise)
    fall during training, and the trained feedback makes denoising better than without it."""
    from ouroboros_core.data import collate_multiview

    t = trainer(lr=3e-2, self_condition_prob=0.5, grad_clip=1.0)
    held_out = toy_batch(2, seed=10)

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            out = t.joint_model(held_out["images"], held_out["alpha"], held_out["cameras"], torch.tensor([0.3, 3.0]), True, torch.Generator().manual_seed(0))
        return {k: float(v) for k, v in out.items()}

    before = evaluate()
    logs = t.train(DataLoader(ToyData(4), batch_size=2, collate_fn=collate_multiview), max_steps=30)
    after = evaluate()
    assert len(logs) == 30 and all("grad_norm" in l for l in logs)
    assert after["total"] < 0.6 * before["total"]
    assert after["recon"] < 0.6 * before["recon"]
    assert after["diffusion"] < 0.9 * after["diffusion_pass1"]  # feedback helps after training


def test_resume_is_bitwise_identical(tmp_path):
    from ouroboros_core.data import make_dataloader

    kwargs = dict(grad_accum=2, ema_decay=0.9, checkpoint_every=3, grad_clip=0.5, self_condition_prob=0.5)
    # 4 shuffled batches per epoch: the checkpoint after 3 steps (6 batches) falls mid-epoch
    data = make_dataloader(ToyData(9), batch_size=2, seed=1)
    full = trainer(seed=7, **kwargs)
    full_logs = full.train(data, max_steps=6, checkpoint_dir=tmp_path / "full")
    ckpt = tmp_path / "full" / "step-00000003"
    assert sorted(p.name for p in ckpt.iterdir()) == ["ema.safetensors", "model.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer.json"]
    assert json.loads((ckpt / "trainer.json").read_text())["step"] == 3
    # the model file holds the trainable tensors under their component paths
    assert "generator.offset" in load_file(str(ckpt / "model.safetensors"))

    torch.manual_seed(123)  # the resumed process starts from another global RNG state...
    resumed = trainer(seed=99, component_seed=5, **kwargs)  # ...other initial weights and seeds
    resumed.load_checkpoint(ckpt)
    assert resumed.step == 3
    resumed_logs = resumed.train(data, max_steps=6, checkpoint_dir=tmp_path / "resumed")
    assert [l for l in resumed_logs] == full_logs[3:]
    for (name, a), (_, b) in zip(full.components.named_parameters(), resumed.components.named_parameters()):
        assert torch.equal(a, b), name
    for name in full.ema.shadow:
        assert torch.equal(full.ema.shadow[name], resumed.ema.shadow[name])
    assert torch.equal(full.optimizer.state_dict()["state"][0]["exp_avg"], resumed.optimizer.state_dict()["state"][0]["exp_avg"])


def test_checkpoint_mismatch_is_a_clear_error(tmp_path):
    t = trainer()
    t.train_step([toy_batch()])
    path = t.save_checkpoint(tmp_path / "ck")
    other = trainer(trainable=["generator"])
    with pytest.raises(WeightsError, match=r"checkpoint does not match the model: unexpected \['feedback.0"):
        other.load_checkpoint(path)
    with pytest.raises(RecipeError, match="grad_accum"):
        trainer(grad_accum=2).load_checkpoint(path)
    with pytest.raises(WeightsError, match="trainer.json is missing"):
        t.load_checkpoint(tmp_path)


def test_checkpoint_with_matching_keys_but_another_shape_names_key_and_shapes(tmp_path):
    from safetensors.torch import save_file

    t = trainer()
    t.train_step([toy_batch()])
    path = t.save_checkpoint(tmp_path / "ck")
    tensors = load_file(str(path / "model.safetensors"))
    tensors["reconstructor.color_gain"] = torch.zeros(5)  # same key, shape (3,) in the model
    save_file(tensors, str(path / "model.safetensors"))
    other = trainer(component_seed=3)
    before = {k: v.detach().clone() for k, v in other.components.state_dict().items()}
    with pytest.raises(WeightsError, match=r"reconstructor\.color_gain has shape \(5,\) in the checkpoint but \(3,\) in the model") as info:
        other.load_checkpoint(path)
    assert "model.safetensors" in str(info.value)
    assert other.step == 0
    for key, value in other.components.state_dict().items():  # nothing was loaded
        assert torch.equal(value, before[key]), key


def test_ema_tracks_and_applies():
    t = trainer(ema_decay=0.5, trainable=["generator"])
    start = t.components["generator"].offset.detach().clone()
    batch = toy_batch()
    t.train_step([batch])
    p1 = t.components["generator"].offset.detach().clone()
    t.train_step([batch])
    p2 = t.components["generator"].offset.detach().clone()
    expected = 0.5 * (0.5 * start + 0.5 * p1) + 0.5 * p2
    assert torch.allclose(t.ema.shadow["generator.offset"], expected)
    with t.ema.applied():
        assert torch.allclose(t.components["generator"].offset, expected)
    assert torch.equal(t.components["generator"].offset, p2)


def test_bf16_mixed_precision_on_cpu():
    t = trainer(mixed_precision="bf16", self_condition_prob=1.0)
    dtypes = []
    enc = t.components["feedback"][0]
    enc.register_forward_hook(lambda m, i, o: dtypes.append(o[0].dtype))
    logs = t.train_step([toy_batch()])
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)  # the encoders ran under autocast
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())


def test_one_process_trains_recipes_of_different_precision_in_turn():
    # accelerate keeps one mixed precision per process; the trainer of a later recipe (as in a
    # notebook or a test session) still gets its own
    trainer(mixed_precision="no").train_step([toy_batch()])
    t = trainer(mixed_precision="bf16", self_condition_prob=1.0)
    dtypes = []
    t.components["feedback"][0].register_forward_hook(lambda m, i, o: dtypes.append(o[0].dtype))
    t.train_step([toy_batch()])
    assert t.accelerator.mixed_precision == "bf16" and dtypes and all(d == torch.bfloat16 for d in dtypes)
    assert trainer(mixed_precision="no").accelerator.mixed_precision == "no"


def test_gradients_reach_gaussian_cloud_parameters():
    from toys import GaussianToyReconstructor

    torch.manual_seed(0)
    gen, rec, encs = ToyGenerator(), GaussianToyReconstructor(), [ToyEncoder(ToyEncoderConfig(map_kind=k)) for k in ("rgb", "ccm")]
    model = JointModel(gen, rec, encs, config(), MapsConfig())
    batch = toy_batch()
    losses = model(batch["images"], batch["alpha"], batch["cameras"], torch.tensor([0.5, 2.0]), True, torch.Generator().manual_seed(0))
    losses["total"].backward()
    for name, p in [*rec.named_parameters(), *encs[1].named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------- staged objectives
def test_reconstructor_objective_reconstructs_clean_views_only():
    gen, rec, encs = components()
    model = JointModel(gen, rec, encs, config(objective="reconstructor"), MapsConfig())
    batch = toy_batch()
    losses = model(batch["images"], batch["alpha"], batch["cameras"], torch.tensor([0.5, 2.0]), True, torch.Generator().manual_seed(0))
    assert gen.denoise_calls == []  # no diffusion at all
    assert len(rec.calls) == 1 and rec.calls[0]["sigma"] is None
    assert torch.allclose(rec.calls[0]["images"], batch["images"][:, [0, 2]])
    # the loss is the reconstruction loss of the clean reconstruction's renders
    rep = rec.reconstruct(batch["images"][:, [0, 2]], batch["cameras"].select_views([0, 2]), None)
    expected = model._recon_loss(rep, batch["images"], batch["alpha"], batch["cameras"])[0]["total"]
    assert torch.allclose(losses["total"], expected) and set(losses) == {"total", "recon", "recon_clean"}
    # only the reconstructor trains
    t = JointTrainer(*components(), config(objective="reconstructor", trainable=["reconstructor"]), MapsConfig(), device="cpu")
    before = {n: p.detach().clone() for n, p in t.components.named_parameters()}
    t.train_step([toy_batch()])
    changed = {n.split(".")[0] for n, p in t.components.named_parameters() if not torch.equal(before[n], p)}
    assert changed == {"reconstructor"}


def test_generator_objective_is_plain_diffusion():
    gen, rec, encs = components()
    for e in encs:
        e.record = True
    model = JointModel(gen, rec, encs, config(objective="generator"), MapsConfig())
    batch = toy_batch()
    sigma = torch.tensor([0.5, 2.0])
    losses = model(batch["images"], batch["alpha"], batch["cameras"], sigma, True, torch.Generator().manual_seed(0))
    assert rec.calls == [] and all(not e.seen for e in encs)  # no reconstruction, no feedback
    assert [c["feedback"] for c in gen.denoise_calls] == [False]  # one pass, no features
    assert losses["feedback"].item() == 0.0
    assert torch.allclose(losses["total"], losses["diffusion"])
