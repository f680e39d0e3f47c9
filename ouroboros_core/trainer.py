"""The generic joint self-conditioning trainer (Algorithm 1 of the paper, DESIGN.md "Training").

One training pass (:class:`JointModel.forward`), written only against the contracts::

    x0      = generator.encode(images)                     (no grad: the target)
    x       = x0 + sigma * eps,  log sigma ~ N(p_mean, p_std^2) per sample
    x0_1    = generator.denoise(x, sigma, ctx, features(zero maps))       pass 1
    views   = generator.decode(x0_1)[input_views]          (no grad)
    rec_s   = reconstructor(views, sigma);  rec_c = reconstructor(gt views, None)
    recon   = mean over both of ReconstructionLoss(render(all cameras), gt)
    with probability p (one seeded draw per batch):
        maps = feedback_maps(render of rec_s)  (detached if configured)
        x0_2 = generator.denoise(x, sigma, ctx, features(maps))           pass 2
    diffusion = mean(lambda(sigma) (x0_k - x0)^2) of pass 2 (pass 1 without feedback;
                the mean of both passes with keep_first_pass_loss)
    loss = diffusion + recon

The optimisation around it (which parameters train, AdamW, gradient accumulation and
clipping, mixed precision, EMA, checkpoint/resume, multi-GPU) is :class:`JointTrainer`, which
places everything with ``accelerate``.

Randomness is explicit: a trainer-owned generator draws the self-conditioning coin (seeded the
same on every process, so all ranks take the same branch and run the same graph), another
(seeded per process) draws sigma, eps and whatever ``training_context`` needs. Both, and the
global torch RNG (dropout), are saved in checkpoints: a resumed run continues exactly as an
uninterrupted one on the same device, given a data order that depends only on the epoch
(sequential, or a sampler with ``set_epoch``; see :meth:`JointTrainer.train`).

Under FSDP (accelerate's FSDP2, ``fsdp_version: 2``) every parameter, gradient, optimizer moment
and EMA shadow is a DTensor shard; checkpoints and exported weights are gathered to full tensors
(written by the main process only) and scattered back into shards on resume, so their files
have the same names, shapes and layout as those of one process or DDP.
"""

from __future__ import annotations

import json
import logging
import math
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .cameras import Cameras
from .edm import loss_weight, sample_training_sigmas
from .errors import RecipeError, UserError, WeightsError
from .interfaces import FeedbackEncoder, MultiViewGenerator, Reconstructor, encode_feedback
from .losses import ReconstructionLoss, balanced_mean
from .maps import feedback_maps, zero_maps
from .recipe import MapsConfig, TrainerConfig
from .textutil import suggest

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
COMPONENT_NAMES = ("generator", "reconstructor", "feedback")


# ====================================================================== the training pass
class JointModel(nn.Module):
    """The three components plus the reconstruction loss; ``forward`` is one training pass.

    Being a module whose ``forward`` does the whole pass is what lets DDP/FSDP/DeepSpeed (via
    ``accelerate``) wrap it and synchronise gradients.
    """

    def __init__(
        self,
        generator: MultiViewGenerator,
        reconstructor: Reconstructor,
        encoders: Sequence[FeedbackEncoder],
        config: TrainerConfig,
        maps_config: MapsConfig,
    ):
        super().__init__()
        self.components = nn.ModuleDict(
            {"generator": generator, "reconstructor": reconstructor, "feedback": nn.ModuleList(encoders)}
        )
        self.config = config
        self.maps_config = maps_config
        self.recon_loss = ReconstructionLoss(config.loss)
        self.map_kinds = list(dict.fromkeys(e.map_kind for e in encoders))

    @property
    def generator(self) -> MultiViewGenerator:
        return self.components["generator"]

    @property
    def reconstructor(self) -> Reconstructor:
        return self.components["reconstructor"]

    @property
    def encoders(self) -> list[FeedbackEncoder]:
        return list(self.components["feedback"])

    def features(self, maps: dict[str, torch.Tensor]) -> list[torch.Tensor] | None:
        """Sum of every encoder's features, slot by slot (``None`` without encoders)."""
        return encode_feedback(self.encoders, maps)

    def _diffusion_mean(self, alpha: torch.Tensor, latent_hw: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
        """How the denoising errors ``(B, V, C, h, w)`` are averaged: plainly, or with object
        and background halves (``diffusion_balance_foreground``) by the alpha ``(B, V, 1, H, W)``
        area-pooled to the latent grid (a latent pixel is "object" when most of its image
        pixels are)."""
        if not self.config.diffusion_balance_foreground:
            return torch.mean
        B, V = alpha.shape[:2]
        pooled = F.adaptive_avg_pool2d(alpha.float().flatten(0, 1), tuple(latent_hw))
        return balanced_mean(pooled.reshape(B, V, 1, *pooled.shape[-2:]))

    def _recon_loss(self, representation, images, alpha, cameras) -> dict[str, torch.Tensor]:
        H, W = images.shape[-2:]
        out = representation.render(cameras, H, W, background=self.maps_config.rgb_background)
        return self.recon_loss(out.rgb, images, out.alpha, alpha), out

    def _reconstructor_only(self, images: torch.Tensor, alpha: torch.Tensor, cameras: Cameras) -> dict[str, torch.Tensor]:
        """Objective "reconstructor": reconstruct the clean input views, score every view."""
        idx = self.reconstructor.input_views
        gt_in = images if idx is None else images[:, idx]
        rep_clean = self.reconstructor.reconstruct(gt_in, cameras.select_views(idx), None)
        loss, _ = self._recon_loss(rep_clean, images, alpha, cameras)
        return {"total": loss["total"], "recon": loss["total"], "recon_clean": loss["total"].detach()}

    def forward(
        self,
        images: torch.Tensor,
        alpha: torch.Tensor,
        cameras: Cameras,
        sigma: torch.Tensor,
        use_feedback: bool,
        rng: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses of one batch: ``images`` ``(B, V, 3, H, W)`` in [0, 1] on the render background,
        ``alpha`` ``(B, V, 1, H, W)``, ``sigma`` ``(B,)``. ``rng`` (a CPU generator) draws eps and
        is handed to ``generator.training_context``."""
        gen, rec = self.generator, self.reconstructor
        B, V = images.shape[:2]
        if self.config.objective == "reconstructor":
            return self._reconstructor_only(images, alpha, cameras)
        with torch.no_grad():
            x0 = gen.encode(images)
        noise = torch.randn(x0.shape, generator=rng, dtype=torch.float32).to(device=x0.device, dtype=x0.dtype)
        sig = sigma.to(x0.dtype).reshape(B, *([1] * (x0.dim() - 1)))
        x = x0 + sig * noise
        ctx = gen.training_context(images, cameras, rng)
        weight = loss_weight(sig.float(), gen.sigma_data)
        mean = self._diffusion_mean(alpha, x0.shape[-2:])

        # pass 1: no feedback (zero maps through the encoders, as the official trainer)
        feats = None
        if self.encoders and self.config.objective == "joint":
            size = gen.image_size
            feats = self.features(zero_maps(self.map_kinds, (B, V, 3, size, size), images.device, images.dtype))
        x0_hat = gen.denoise(x, sigma, ctx, feats)
        diffusion_1 = mean(weight * (x0_hat.float() - x0.float()) ** 2)
        if self.config.objective == "generator":
            zero = torch.zeros((), device=images.device)
            return {"total": diffusion_1, "diffusion": diffusion_1, "diffusion_pass1": diffusion_1.detach(), "feedback": zero}

        # reconstruction from the decoded x0 estimate (at sigma) and from the clean views
        idx = rec.input_views
        view_cams = cameras.select_views(idx)
        with torch.no_grad():
            decoded = gen.decode(x0_hat.detach())
        decoded = decoded if idx is None else decoded[:, idx]
        gt_in = images if idx is None else images[:, idx]
        rep_noisy = rec.reconstruct(decoded, view_cams, sigma)
        rep_clean = rec.reconstruct(gt_in, view_cams, None)
        loss_noisy, out_noisy = self._recon_loss(rep_noisy, images, alpha, cameras)
        loss_clean, _ = self._recon_loss(rep_clean, images, alpha, cameras)
        recon = (loss_noisy["total"] + loss_clean["total"]) / 2

        # pass 2: self-conditioning on the maps rendered from the sigma reconstruction
        diffusion = diffusion_1
        if use_feedback and self.encoders:
            size = gen.image_size
            out = out_noisy
            if tuple(images.shape[-2:]) != (size, size):
                out = rep_noisy.render(cameras, size, size, background=self.maps_config.rgb_background)
            maps = feedback_maps(out, cameras, self.map_kinds, self.maps_config)
            if self.config.detach_feedback:
                maps = {k: v.detach() for k, v in maps.items()}
            x0_hat_2 = gen.denoise(x, sigma, ctx, self.features(maps))
            diffusion_2 = mean(weight * (x0_hat_2.float() - x0.float()) ** 2)
            diffusion = (diffusion_1 + diffusion_2) / 2 if self.config.keep_first_pass_loss else diffusion_2
        used = float(use_feedback and bool(self.encoders))
        return {
            "total": diffusion + recon,
            "diffusion": diffusion,
            "diffusion_pass1": diffusion_1.detach(),
            "recon": recon,
            "recon_noisy": loss_noisy["total"].detach(),
            "recon_clean": loss_clean["total"].detach(),
            "feedback": torch.tensor(used, device=images.device),
        }


# ====================================================================== parameter selection
def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def parameter_groups(
    components: nn.ModuleDict,
    trainable: Sequence[str],
    lr: float,
    lr_scale: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """AdamW parameter groups for the parameters under the ``trainable`` prefixes.

    Names are paths inside ``{generator, reconstructor, feedback}`` (e.g. ``generator``,
    ``generator.plucker``, ``feedback.0``). Everything else is frozen (``requires_grad`` off);
    parameters a component froze itself (a VAE, an image encoder) stay frozen. ``lr_scale``
    multiplies the learning rate by prefix, the longest matching prefix winning. A prefix that
    matches nothing is a :class:`RecipeError`.
    """
    lr_scale = dict(lr_scale or {})
    named = list(components.named_parameters())
    names = [n for n, _ in named]
    tops = sorted({n.split(".")[0] for n in names} | set(COMPONENT_NAMES))
    for key, prefixes in (("trainer.trainable", trainable), ("trainer.lr_scale", list(lr_scale))):
        for prefix in prefixes:
            if any(_matches(n, prefix) for n in names):
                continue
            top = prefix.split(".")[0]
            if top in COMPONENT_NAMES and not any(_matches(n, top) for n in names):
                hint = f"this recipe's {top} has no parameters (e.g. {top}: []); drop {prefix!r} from {key}"
                if key == "trainer.lr_scale":
                    hint += f" (a recipe that extends another: --set '{key}={{}}' clears the inherited entries)"
            else:
                hint = suggest(top, tops, "component") + "; deeper paths are module names, e.g. generator.unet"
            raise RecipeError(f"{key}: {prefix!r} matches no parameter", hint=hint)
    groups: dict[float, list[nn.Parameter]] = {}
    for name, param in named:
        chosen = param.requires_grad and any(_matches(name, p) for p in trainable)
        param.requires_grad_(chosen)
        if not chosen:
            continue
        scale_prefix = max((p for p in lr_scale if _matches(name, p)), key=len, default=None)
        scale = lr_scale[scale_prefix] if scale_prefix is not None else 1.0
        groups.setdefault(scale, []).append(param)
    if not groups:
        raise RecipeError(
            f"trainer.trainable: {list(trainable)} selects no trainable parameter",
            hint="name at least one of generator, reconstructor, feedback",
        )
    return [{"params": params, "lr": lr * scale, "lr_scale": scale} for scale, params in groups.items()]


# ====================================================================== memory and schedule
def apply_gradient_checkpointing(components: nn.ModuleDict, patterns: Sequence[str]) -> list[str]:
    """Recompute the activations of the modules ``patterns`` name in the backward pass.

    Each pattern is a module path inside ``{generator, reconstructor, feedback}`` or an
    ``fnmatch`` pattern over those paths (``reconstructor.unet.*.nets.?``). A matched module
    with its own switch (diffusers' ``enable_gradient_checkpointing``) uses it; any other has its
    ``forward`` run under ``torch.utils.checkpoint`` (non-reentrant, RNG state preserved) while
    training with gradients enabled. Modules inside an already chosen one are skipped. A pattern
    that matches nothing is a :class:`RecipeError`. Returns the chosen module paths.
    """
    from fnmatch import fnmatchcase

    modules = dict(components.named_modules())
    chosen: list[str] = []
    for pattern in patterns:
        found = [name for name in modules if name and (name == pattern or fnmatchcase(name, pattern))]
        if not found:
            tops = sorted({n.split(".")[0] for n in modules if n})
            raise RecipeError(
                f"trainer.gradient_checkpointing: {pattern!r} matches no module",
                hint=suggest(pattern.split(".")[0], tops, "component") + "; use module paths such as generator.unet",
            )
        chosen += [n for n in found if n not in chosen]
    outer = [n for n in chosen if not any(n.startswith(o + ".") for o in chosen if o != n)]
    for name in outer:
        module = modules[name]
        if getattr(module, "_supports_gradient_checkpointing", False) and hasattr(module, "enable_gradient_checkpointing"):
            module.enable_gradient_checkpointing()
        else:
            _checkpoint_forward(module)
    return outer


def _checkpoint_forward(module: nn.Module) -> None:
    from torch.utils.checkpoint import checkpoint

    if getattr(module, "_ouroboros_checkpointed", False):
        return
    inner = module.forward

    def forward(*args, **kwargs):
        if module.training and torch.is_grad_enabled():
            return checkpoint(inner, *args, use_reentrant=False, **kwargs)
        return inner(*args, **kwargs)

    module.forward = forward
    module._ouroboros_checkpointed = True


def lr_factor(config: TrainerConfig, step: int) -> float | None:
    """The learning-rate multiplier of optimiser step ``step`` (0-based) under
    ``config.lr_schedule`` over ``config.max_steps`` after ``config.lr_warmup_steps`` of linear
    warm-up; ``None`` when the schedule is constant without warm-up (the rates stay as set)."""
    import math

    if config.lr_schedule == "constant" and not config.lr_warmup_steps:
        return None
    warmup = config.lr_warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if config.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, config.max_steps - warmup))
    low = config.lr_min_ratio
    if config.lr_schedule == "linear":
        return 1.0 - (1.0 - low) * progress
    return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ====================================================================== EMA
class EMA:
    """Exponential moving average of the trainable parameters (fp32 shadow copies).

    Each shadow is shaped as its parameter is: under FSDP a DTensor shard, so every process
    averages its own shard and the average of the full weights is the gathered shards.
    """

    def __init__(self, named_parameters: Iterable[tuple[str, nn.Parameter]], decay: float):
        self.decay = decay
        self.params = {n: p for n, p in named_parameters if p.requires_grad}
        self.shadow = {n: p.detach().float().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, param in self.params.items():
            self.shadow[name].lerp_(param.detach().float(), 1 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily put the averaged weights into the model (for evaluation or export)."""
        saved = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(saved[n])


# ====================================================================== the trainer
@dataclass
class TrainStepInfo:
    """What a training callback sees after each optimiser step (losses averaged over the
    accumulated micro-batches and, with several processes, over the processes)."""

    step: int
    losses: dict[str, float]
    lr: float


TrainCallback = Callable[[TrainStepInfo], Any]


def _make_accelerator(config: TrainerConfig, device: str | None):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    # accelerate keeps one precision per process and refuses an Accelerator with another one;
    # a single process may train several recipes in turn (a notebook, a test session), so the
    # earlier run's state is dropped there. Launched processes keep accelerate's own check.
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != config.mixed_precision and PartialState().num_processes == 1:
        AcceleratorState._reset_state()
    return Accelerator(cpu=device == "cpu", mixed_precision=config.mixed_precision)


def _check_sharding(accelerator) -> None:
    """Refuse FSDP1 and say when an FSDP launch config is not sharding at all.

    FSDP1 keeps a flat parameter per wrapped module and renames the modules it wraps, which the
    EMA shadows, checkpoints and exported weights here do not handle (they handle FSDP2's
    DTensor shards). accelerate builds FSDP only on accelerators: with the CPU it quietly
    trains every process with full weights (plain data parallel), which is correct but is not
    the memory saving the config was chosen for.
    """
    from accelerate.utils import DistributedType

    if getattr(accelerator, "distributed_type", None) == DistributedType.FSDP:
        if not getattr(accelerator, "is_fsdp2", False):
            raise UserError(
                "FSDP version 1 is not supported by the trainer (its checkpoints, EMA and exported weights need FSDP2)",
                hint="set fsdp_version: 2 in the accelerate config, as configs/accelerate/fsdp.yaml does",
            )
    elif os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        logger.warning(
            "the accelerate config asks for FSDP, but accelerate runs FSDP only on GPUs: these %s "
            "processes train unsharded, each with full weights", accelerator.device.type,
        )


def _configure_deepspeed(accelerator, config: TrainerConfig) -> None:
    """Under DeepSpeed: its engine steps after every backward pass, so the trainer's own
    accumulation cannot work (``trainer.grad_accum`` must be 1); the micro-batch size it asks for
    is ``trainer.batch_size`` (the loader is not passed to ``prepare`` with the model)."""
    from accelerate.utils import DistributedType

    if getattr(accelerator, "distributed_type", None) != DistributedType.DEEPSPEED:
        return
    if config.grad_accum != 1:
        raise RecipeError(
            f"trainer.grad_accum is {config.grad_accum}; under DeepSpeed it must be 1",
            hint="set trainer.grad_accum=1 and reach the total batch with more GPUs or trainer.batch_size",
        )
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        ds["train_micro_batch_size_per_gpu"] = config.batch_size
    if ds.get("train_batch_size", "auto") == "auto":
        ds["train_batch_size"] = config.batch_size * accelerator.num_processes


class JointTrainer:
    """Trains generator, reconstructor and feedback encoders jointly (Algorithm 1).

    ``accelerator``: an ``accelerate.Accelerator`` (multi-GPU, DeepSpeed, FSDP come from its
    configuration); by default one is made from ``config.mixed_precision`` (``device="cpu"``
    forces the CPU). Gradient accumulation is done here (``config.grad_accum`` micro-batches
    per optimiser step), so pass an accelerator without its own accumulation.
    """

    def __init__(
        self,
        generator: MultiViewGenerator,
        reconstructor: Reconstructor,
        encoders: Sequence[FeedbackEncoder],
        config: TrainerConfig,
        maps_config: MapsConfig | None = None,
        *,
        seed: int = 0,
        accelerator=None,
        device: str | None = None,
    ):
        self.config = config
        self.accelerator = accelerator if accelerator is not None else _make_accelerator(config, device)
        model = JointModel(generator, reconstructor, encoders, config, maps_config or MapsConfig())
        if config.gradient_checkpointing:
            apply_gradient_checkpointing(model.components, config.gradient_checkpointing)
        groups = parameter_groups(model.components, config.trainable, config.lr, config.lr_scale)
        _check_sharding(self.accelerator)
        _configure_deepspeed(self.accelerator, config)
        self.trainable_names = [n for n, p in model.components.named_parameters() if p.requires_grad]
        # the fused kernel: one pass over all tensors (a third of the for-loop's time on the CPU)
        fused = self.accelerator.device.type in ("cpu", "cuda")
        optimizer = torch.optim.AdamW(
            groups, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay, fused=fused
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.ema = EMA(self.components.named_parameters(), config.ema_decay) if config.ema_decay else None
        self.coin_rng = torch.Generator().manual_seed(seed)
        self.noise_rng = torch.Generator().manual_seed(seed + 7919 * (self.accelerator.process_index + 1))
        self.step = 0
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ access
    @property
    def joint_model(self) -> JointModel:
        return self.accelerator.unwrap_model(self.model)

    @property
    def components(self) -> nn.ModuleDict:
        return self.joint_model.components

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def sharded(self) -> bool:
        """True under FSDP2: parameters, gradients, optimizer state and EMA shadows are DTensor
        shards, so reading or writing full weights is a collective every process takes part in."""
        return bool(getattr(self.accelerator, "is_fsdp2", False))

    def _trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.components.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ one step
    def _unpack(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, Cameras]:
        """Images, alpha and cameras on the device; accepts ``cameras`` or ``c2w`` + ``intrinsics``."""
        images = batch["images"].to(self.device, torch.float32)
        alpha = batch.get("alpha")
        alpha = torch.ones_like(images[:, :, :1]) if alpha is None else alpha.to(self.device, torch.float32)
        cameras = batch.get("cameras")
        if cameras is None:
            cameras = Cameras(batch["c2w"], batch["intrinsics"])
        return images, alpha, cameras.to(self.device, torch.float32)

    def _micro_step(self, batch: dict[str, Any], sync: bool, scale: float) -> dict[str, float]:
        images, alpha, cameras = self._unpack(batch)
        sigma = sample_training_sigmas(images.shape[0], self.config.p_mean, self.config.p_std, self.noise_rng, self.device)
        use_feedback = bool(torch.rand((), generator=self.coin_rng) < self.config.self_condition_prob)
        context = nullcontext() if sync else self.accelerator.no_sync(self.model)
        with context:
            losses = self.model(images, alpha, cameras, sigma, use_feedback, self.noise_rng)
            self.accelerator.backward(losses["total"] * scale)
        return {k: float(v.detach()) for k, v in losses.items()}

    def train_step(self, batches: Sequence[dict[str, Any]]) -> dict[str, float]:
        """One optimiser step over ``batches`` (the accumulated micro-batches)."""
        self.model.train()
        n = len(batches)
        logs: dict[str, float] = {}
        for k, batch in enumerate(batches):
            for key, value in self._micro_step(batch, sync=k == n - 1, scale=1.0 / n).items():
                logs[key] = logs.get(key, 0.0) + value / n
        if self.accelerator.num_processes > 1:  # report the mean over processes: the loss of the whole batch
            keys = sorted(logs)
            local = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=self.device)
            logs = dict(zip(keys, self.accelerator.reduce(local, reduction="mean").tolist()))
        if self.config.grad_clip:
            norm = self.accelerator.clip_grad_norm_(self._trainable_parameters(), self.config.grad_clip)
            if norm is None:  # DeepSpeed clips inside its own step and reports the norm after it
                report = getattr(self.model, "get_global_grad_norm", None)
                norm = report() if report is not None else None
            logs["grad_norm"] = float(norm) if norm is not None else math.nan
        factor = lr_factor(self.config, self.step)
        if factor is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.lr * group.get("lr_scale", 1.0) * factor
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        self.step += 1
        return logs

    # ------------------------------------------------------------------ the loop
    def _batches(self, dataloader: Iterable, skip: int) -> Iterator[Any]:
        """Cycle over ``dataloader`` epoch after epoch, skipping the first ``skip`` batches.

        Each epoch calls ``set_epoch(epoch)`` on the loader, its sampler or its dataset when
        they have one. Creating the iterator and fetching run under a forked global RNG, so
        loading never shifts the random numbers the model sees (a resumed run re-creates its
        iterator at another time).
        """
        length = len(dataloader) if hasattr(dataloader, "__len__") else None
        epoch = 0
        if length:
            epoch, skip = divmod(skip, length)
        while True:
            for owner in (dataloader, getattr(dataloader, "sampler", None), getattr(dataloader, "batch_sampler", None), getattr(dataloader, "dataset", None)):
                if owner is not None and hasattr(owner, "set_epoch"):
                    owner.set_epoch(epoch)
            source: Iterable = dataloader
            if skip and isinstance(dataloader, torch.utils.data.DataLoader):
                from accelerate import skip_first_batches

                source, skip = skip_first_batches(dataloader, skip), 0
            with torch.random.fork_rng(devices=[]):  # a DataLoader draws its base seed here
                iterator = iter(source)
            produced = False
            while True:
                with torch.random.fork_rng(devices=[]):
                    batch = next(iterator, None)
                if batch is None:
                    break
                produced = True
                if skip:
                    skip -= 1
                    continue
                yield batch
            if not produced:
                raise ValueError("the training data loader produced no batches")
            epoch += 1

    def train(
        self,
        dataloader: Iterable,
        max_steps: int | None = None,
        callbacks: Iterable[TrainCallback] = (),
        checkpoint_dir: str | os.PathLike | None = None,
    ) -> list[dict[str, float]]:
        """Train until ``max_steps`` optimiser steps (``config.max_steps`` by default).

        Continues from ``self.step`` after :meth:`load_checkpoint`, skipping the micro-batches
        already consumed. Saves ``<checkpoint_dir>/step-XXXXXXXX`` every
        ``config.checkpoint_every`` steps (default folder ``<output_dir>/checkpoints``).
        Returns the per-step losses of this call.
        """
        cfg = self.config
        max_steps = cfg.max_steps if max_steps is None else max_steps
        checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else Path(cfg.output_dir) / "checkpoints"
        callbacks = list(callbacks)
        if isinstance(dataloader, torch.utils.data.DataLoader) and self.accelerator.num_processes > 1:
            dataloader = self.accelerator.prepare(dataloader)
        batches = self._batches(dataloader, skip=self.step * cfg.grad_accum)
        logs_this_call: list[dict[str, float]] = []
        while self.step < max_steps:
            logs = self.train_step([next(batches) for _ in range(cfg.grad_accum)])
            logs["step"] = self.step
            self.history.append(logs)
            logs_this_call.append(logs)
            lr = self.optimizer.param_groups[0]["lr"]
            if cfg.log_every and self.step % cfg.log_every == 0:
                shown = ", ".join(f"{k} {v:.4g}" for k, v in logs.items() if k != "step")
                logger.info("step %d: %s", self.step, shown)
            info = TrainStepInfo(self.step, logs, lr)
            for callback in callbacks:
                callback(info)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint(checkpoint_dir / f"step-{self.step:08d}")
        return logs_this_call

    # ------------------------------------------------------------------ checkpoints
    def _model_tensors(self) -> dict[str, torch.Tensor]:
        """Trainable parameters and all buffers of the components (frozen weights come from
        the components' own sources), full tensors.

        Under FSDP the shards are gathered (a collective: every process must call this) onto
        the main process's CPU, one tensor at a time; the other processes get ``{}``.
        """
        if self.sharded:
            state = self._gather_full(frozen=False)
        else:
            prefix = "components."
            state = {k[len(prefix):]: v for k, v in self.accelerator.get_state_dict(self.model).items() if k.startswith(prefix)}
        keep = self._checkpoint_shapes()
        return {k: v for k, v in state.items() if k in keep}

    def _checkpoint_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name and full shape of every tensor ``model.safetensors`` holds (a DTensor reports
        its full shape, so nothing is gathered)."""
        keep = set(self.trainable_names) | {n for n, _ in self.components.named_buffers()}
        return {k: tuple(v.shape) for k, v in self.components.state_dict().items() if k in keep}

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor of the components' state dicts (frozen ones too), keyed by path inside
        the components (``generator.unet...``, ``feedback.0...``): what exported weights hold.

        Without FSDP these are the live tensors (copy them before the weights change). Under
        FSDP it is a collective (every process must call it) and only the main process gets
        the gathered full tensors, on the CPU; the others get ``{}``.
        """
        return self._gather_full(frozen=True) if self.sharded else self.components.state_dict()

    def _gather_full(self, frozen: bool) -> dict[str, torch.Tensor]:
        """Under FSDP: the components' full tensors (``frozen`` ones too, or not), gathered onto
        the main process's CPU and keyed by path inside the components; ``{}`` elsewhere."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=not frozen)
        prefix = "components."
        return {k[len(prefix):]: v for k, v in get_model_state_dict(self.model, options=options).items() if k.startswith(prefix)}

    def _optimizer_param_names(self) -> list[str]:
        """The optimizer's parameters as model paths, in the order a torch optimizer numbers them
        in its ``state_dict`` (group after group)."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        return [names[id(p)] for group in self.optimizer.param_groups for p in group["params"]]

    def _optimizer_state(self) -> dict[str, Any]:
        """The optimizer state dict keyed by parameter number, as a torch optimizer's own, so a
        checkpoint does not depend on how the run was sharded.

        Under FSDP the moments are gathered from the shards (a collective; the main process gets
        them on the CPU, the others ``{}``) and renumbered from torch's per-name layout.
        """
        if not self.sharded:
            return self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        by_name = get_optimizer_state_dict(self.model, self.optimizer.optimizer, options=options)
        if not by_name:
            return {}
        number = {name: i for i, name in enumerate(self._optimizer_param_names())}
        return {
            "state": {number[name]: entry for name, entry in by_name["state"].items()},
            "param_groups": [dict(g, params=[number[name] for name in g["params"]]) for g in by_name["param_groups"]],
        }

    def _load_optimizer_state(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`_optimizer_state` (full tensors on every process);
        under FSDP each process keeps its own shard of every moment."""
        if not self.sharded:
            self.optimizer.load_state_dict(state_dict)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = self._optimizer_param_names()
        by_name = {
            "state": {names[index]: entry for index, entry in state_dict["state"].items()},
            "param_groups": [dict(g, params=[names[i] for i in g["params"]]) for g in state_dict["param_groups"]],
        }
        set_optimizer_state_dict(
            self.model, self.optimizer.optimizer, by_name, options=StateDictOptions(full_state_dict=True)
        )

    def _gather_process_rng(self) -> dict[str, torch.Tensor]:
        """Every process's noise generator and global torch RNG state, gathered (a collective).

        Processes draw different noise (the noise generator is seeded by rank), so a resumed run
        must give each process back its own state: ``noise``/``torch`` for process 0 (the
        single-process keys) and ``noise.rank<R>``/``torch.rank<R>`` for the others.
        """
        local = {"noise": self.noise_rng.get_state(), "torch": torch.get_rng_state()}
        states: dict[str, torch.Tensor] = dict(local)
        if self.accelerator.num_processes == 1:
            return states
        for key, state in local.items():
            # NCCL gathers device tensors only; gloo takes either
            gathered = self.accelerator.gather(state[None].to(self.device)).cpu()
            states.update({f"{key}.rank{rank}": gathered[rank] for rank in range(1, len(gathered))})
        return states

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write a resumable checkpoint folder (safetensors + JSON), atomically.

        Every process must call it (it gathers random states, and under FSDP the weights,
        moments and EMA shadows); only the main process writes.
        """
        from safetensors.torch import save_file

        from .io.atomic import atomic_output_dir

        path = Path(path)
        self.accelerator.wait_for_everyone()
        process_rng = self._gather_process_rng()
        main = self.accelerator.is_main_process
        gather = self.sharded or main  # without FSDP every tensor is whole on the main process
        model = self._model_tensors() if gather else {}
        optimizer = self._optimizer_state() if gather else {}
        ema = _full_tensors(self.ema.shadow, keep=main) if self.ema is not None and gather else {}
        if main:
            with atomic_output_dir(path) as tmp:
                save_file(_cpu(model), str(tmp / "model.safetensors"))
                opt_tensors, opt_meta = _flatten_optimizer(optimizer)
                save_file(_cpu(opt_tensors), str(tmp / "optimizer.safetensors"))
                rng = {"coin": self.coin_rng.get_state(), **process_rng}
                if torch.cuda.is_available():
                    rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
                save_file(_cpu(rng), str(tmp / "rng.safetensors"))
                if self.ema is not None:
                    save_file(ema, str(tmp / "ema.safetensors"))
                scaler = getattr(self.accelerator, "scaler", None)
                meta = {
                    "format": CHECKPOINT_FORMAT,
                    "step": self.step,
                    "grad_accum": self.config.grad_accum,
                    "optimizer": opt_meta,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                }
                (tmp / "trainer.json").write_text(json.dumps(meta, indent=1))
        self.accelerator.wait_for_everyone()
        return path

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore a folder written by :meth:`save_checkpoint`; :meth:`train` then continues.

        Every process reads the folder (a file system they share) and loads the full tensors:
        into the unwrapped components with one process, DDP and DeepSpeed ZeRO-1/2 (every rank
        holds full parameters); under FSDP each process keeps its shards of the weights,
        optimizer moments and EMA shadows. The files do not depend on the number of processes
        or the sharding (ZeRO-3 is not handled).
        """
        from safetensors.torch import load_file

        path = Path(path)
        meta_file = path / "trainer.json"
        if not meta_file.is_file():
            raise WeightsError("not a trainer checkpoint (trainer.json is missing)", where=str(path), hint="pass a step-XXXXXXXX folder written by the trainer")
        meta = json.loads(meta_file.read_text())
        if meta.get("grad_accum") != self.config.grad_accum:
            raise RecipeError(
                f"trainer.grad_accum is {self.config.grad_accum} but the checkpoint was trained with {meta.get('grad_accum')}",
                where=str(path),
                hint="resume with the same trainer.grad_accum",
            )
        tensors = load_file(str(path / "model.safetensors"))
        expected = self._checkpoint_shapes()
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
            raise WeightsError(
                f"checkpoint does not match the model: {what}",
                where=str(path / "model.safetensors"),
                hint="resume with the recipe (components and trainer.trainable) the checkpoint was trained with",
            )
        for key in sorted(tensors):
            if tuple(tensors[key].shape) != expected[key]:
                raise WeightsError(
                    f"checkpoint does not match the model: {key} has shape {tuple(tensors[key].shape)} "
                    f"in the checkpoint but {expected[key]} in the model",
                    where=str(path / "model.safetensors"),
                    hint="resume with the recipe (component configs and presets) the checkpoint was trained with",
                )
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            full = {f"components.{k}": v for k, v in tensors.items()}
            set_model_state_dict(self.model, full, options=StateDictOptions(full_state_dict=True, strict=False))
        else:
            self.components.load_state_dict(tensors, strict=False)
        self._load_optimizer_state(_unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), meta["optimizer"]))
        rng = load_file(str(path / "rng.safetensors"))
        self.coin_rng.set_state(rng["coin"])
        rank = self.accelerator.process_index
        suffix = f".rank{rank}" if rank else ""
        if f"noise{suffix}" in rng:
            self.noise_rng.set_state(rng[f"noise{suffix}"])
            torch.set_rng_state(rng[f"torch{suffix}"])
        else:
            logger.warning(
                "%s holds no random state for process %d (it was written by fewer processes): "
                "its noise continues from a fresh seed, so this run differs from an uninterrupted one", path, rank,
            )
        cuda_states = [rng[k] for k in sorted((k for k in rng if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states)
        if self.ema is not None:
            shadow = load_file(str(path / "ema.safetensors"))
            for name, current in self.ema.shadow.items():
                current.copy_(_shard_like(shadow[name], current))
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        self.step = int(meta["step"])


# ====================================================================== full tensors and shards
def _full_tensors(tensors: dict[str, torch.Tensor], keep: bool) -> dict[str, torch.Tensor]:
    """CPU copies of ``tensors``, each DTensor shard gathered into its full tensor.

    Gathering is a collective: every process calls this with the same names in the same order.
    Only a process with ``keep`` holds the results; the others drop each full tensor at once,
    so no process ever holds more than one full tensor beyond its shards and what it keeps.
    """
    from torch.distributed.tensor import DTensor

    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        if keep:
            out[name] = full.detach().to("cpu", copy=True).contiguous()
    return out


def _shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` cut into this process's shard of ``like`` when ``like`` is a DTensor (every
    process holds ``full``, so each slices its own part without communicating)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor):
        return full
    return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None)


# ====================================================================== optimizer (de)serialisation
def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous, unshared CPU copies (safetensors refuses tensors that share memory)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A torch optimizer state dict as flat tensors (``state.<param>.<key>``) plus JSON."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, entry in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}
