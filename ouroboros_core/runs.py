"""Training runs driven by a recipe (what ``ouroboros3d train`` does; evaluation is
:mod:`ouroboros_core.evaluation`).

A training run folder holds everything needed to continue or use it::

    <run>/recipe.yaml              the resolved recipe
    <run>/log.jsonl                one line of losses (and seconds since start) per optimiser step
    <run>/checkpoints/step-N/      resumable trainer state (safetensors + JSON)
    <run>/weights/<part>.safetensors  each component's weights (EMA when enabled)
    <run>/trained.yaml             a recipe using those weights: ``generate --recipe <run>/trained.yaml``
    <run>/weights-raw/, trained-raw.yaml  the raw weights too (EMA with ``trainer.export_raw_weights``)
    <run>/tensorboard/             TensorBoard event files (``trainer.tensorboard``)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import yaml

from .build import attention_context, build_components, resolve_device
from .data import build_dataset, make_dataloader
from .errors import RecipeError, UserError
from .recipe import Recipe

if TYPE_CHECKING:
    from .trainer import JointTrainer

log = logging.getLogger(__name__)


def _check_data(recipe: Recipe) -> None:
    """The training views must be what the generator makes."""
    data, gen = recipe.model.trainer.data, recipe.generator_config
    for key, value, expected in (("num_views", data.num_views, gen.num_views), ("image_size", data.image_size, gen.image_size)):
        if value is not None and value != expected:
            raise RecipeError(
                f"trainer.data.{key} is {value}, but generator '{recipe.generator_spec.name}' uses {expected}",
                hint=f"remove trainer.data.{key} (it defaults to the generator's) or set it to {expected}",
                where=str(recipe.source),
            )


def _dataset(recipe: Recipe, **updates: Any):
    model = recipe.model
    config = model.trainer.data.model_copy(update=updates)
    return build_dataset(config, model.seed, recipe.generator_config.num_views, recipe.generator_config.image_size)


def _latest_checkpoint(folder: Path) -> Path:
    found = sorted(folder.glob("step-*"))
    if not found:
        raise UserError("no checkpoint to resume from", where=str(folder), hint="train without --resume first")
    return found[-1]


def component_parts(recipe: Recipe) -> list[str]:
    """File stems of the exported weights, in recipe order."""
    return ["generator", "reconstructor"] + [f"feedback-{i}" for i in range(len(recipe.model.feedback))]


def export_weights(
    recipe: Recipe, state: dict[str, torch.Tensor], run_dir: Path, folder: str = "weights", recipe_file: str = "trained.yaml"
) -> Path:
    """Write ``<folder>/<part>.safetensors`` and ``<recipe_file>`` (a recipe that loads them).

    ``state`` holds full tensors keyed by path inside the components (``generator.unet...``,
    ``feedback.0...``; :meth:`~ouroboros_core.trainer.JointTrainer.full_state_dict`); each part's
    file holds its component's own keys, as its ``state_dict`` names them.
    """
    from safetensors.torch import save_file

    from .io.atomic import atomic_write

    weights = run_dir / folder
    weights.mkdir(parents=True, exist_ok=True)
    prefixes = ["generator.", "reconstructor."] + [f"feedback.{i}." for i in range(len(recipe.model.feedback))]
    for part, prefix in zip(component_parts(recipe), prefixes):
        tensors = {k[len(prefix):]: v.detach().to("cpu").contiguous().clone() for k, v in state.items() if k.startswith(prefix)}
        with atomic_write(weights / f"{part}.safetensors") as tmp:
            save_file(tensors, str(tmp))
    trained = recipe.to_dict()
    trained["name"] = f"{recipe.name}-trained"
    trained["generator"]["weights"] = f"./{folder}/generator.safetensors"
    trained["reconstructor"]["weights"] = f"./{folder}/reconstructor.safetensors"
    for i, entry in enumerate(trained["feedback"]):
        entry["weights"] = f"./{folder}/feedback-{i}.safetensors"
    target = run_dir / recipe_file
    with atomic_write(target) as tmp:
        tmp.write_text(yaml.safe_dump(trained, sort_keys=False))
    return target


class TrainingBoard:
    """TensorBoard event files of a run, in ``<run>/tensorboard`` (``trainer.tensorboard``).

    Scalars every step: ``loss/total``, ``loss/diffusion`` (pass 1, without feedback),
    ``loss/self_conditioning`` (pass 2, on steps that took it), ``loss/reconstruction`` (and its
    ``_noisy``/``_clean`` parts), ``train/lr``, ``train/grad_norm`` (with gradient clipping),
    ``train/steps_per_s``. Every ``trainer.validate_every`` steps the image ``validation``: for
    one fixed object (the first held-out procedural object, or the first of ``trainer.data``),
    the top row is its input view and the generated views, the bottom row the renders of the
    generated 3D at the same cameras.
    """

    TAGS = {
        "total": "loss/total", "diffusion_pass1": "loss/diffusion", "recon": "loss/reconstruction",
        "recon_noisy": "loss/reconstruction_noisy", "recon_clean": "loss/reconstruction_clean",
    }

    def __init__(self, recipe: Recipe, trainer, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.recipe = recipe
        self.trainer = trainer
        self.folder = Path(run_dir) / "tensorboard"
        self.writer = SummaryWriter(str(self.folder), flush_secs=10)
        self.every = recipe.model.trainer.validate_every
        self.validation = self._validation_object() if self.every else None
        self.previous = 0.0

    def _validation_object(self) -> dict[str, Any]:
        data = self.recipe.model.trainer.data
        updates: dict[str, Any] = {"num_objects": 1, "random_start_view": False}
        if data.kind == "procedural":
            updates["split"] = "heldout"
        return _dataset(self.recipe, **updates)[0]

    def record(self, info, elapsed: float) -> None:
        """One optimiser step; ``elapsed``: seconds since training started."""
        w, step, losses = self.writer, info.step, info.losses
        for key, tag in self.TAGS.items():
            if key in losses:
                w.add_scalar(tag, losses[key], step)
        if "diffusion_pass1" not in losses and "diffusion" in losses:
            w.add_scalar("loss/diffusion", losses["diffusion"], step)
        if losses.get("feedback"):
            w.add_scalar("loss/self_conditioning", losses["diffusion"], step)
        w.add_scalar("train/lr", info.lr, step)
        if "grad_norm" in losses:
            w.add_scalar("train/grad_norm", losses["grad_norm"], step)
        if elapsed > self.previous:
            w.add_scalar("train/steps_per_s", 1.0 / (elapsed - self.previous), step)
        if self.every and step % self.every == 0:
            w.add_image("validation", self.validation_strip(), step)
        self.previous = elapsed

    @torch.no_grad()
    def validation_strip(self) -> torch.Tensor:
        """``(3, 2H, (V + 1) W)`` in [0, 1]: input and generated views over blank and renders."""
        from .data import collate_multiview
        from .sampler import RecursiveSampler

        model, trainer = self.recipe.model, self.trainer
        components, device = trainer.components, trainer.device
        item = collate_multiview([self.validation])
        gt = item["images"].to(device, torch.float32)
        cams = item["cameras"].to(device, torch.float32)
        sampler = RecursiveSampler(components["generator"], components["reconstructor"], list(components["feedback"]), model.sampler, model.maps)
        training = components.training
        components.eval()
        devices = [device] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):  # training's random numbers stay as they were
                out = sampler(gt[:, 0], cams, generator=torch.Generator(device=device).manual_seed(model.seed))
                size = gt.shape[-1]
                renders = out.representation.render(cams, size, size, background=1.0).rgb
        finally:
            components.train(training)
        views = out.views[0].float().clamp(0, 1).cpu()
        renders = renders[0].float().clamp(0, 1).cpu()
        first = gt[0, 0].cpu()
        top = torch.cat([first, *views], dim=-1)
        bottom = torch.cat([torch.ones_like(first), *renders], dim=-1)
        return torch.cat([top, bottom], dim=-2)

    def close(self) -> None:
        self.writer.close()


def build_trainer(recipe: Recipe, num_workers: int | None = None) -> tuple["JointTrainer", Any]:
    """The trainer and the data loader of ``recipe``, as ``train`` uses them. The components
    are built on the CPU in fp32 (master weights); the accelerator places them on this
    process's device (cuda:<local rank> under ``accelerate launch``). ``num_workers``
    overrides ``trainer.data.num_workers``."""
    from .trainer import JointTrainer

    model, cfg = recipe.model, recipe.model.trainer
    parts = build_components(recipe, device=torch.device("cpu"), dtype=torch.float32)
    workers = cfg.data.num_workers if num_workers is None else num_workers
    loader = make_dataloader(_dataset(recipe), cfg.batch_size, seed=model.seed, num_workers=workers)
    trainer = JointTrainer(
        parts.generator, parts.reconstructor, parts.encoders, cfg, model.maps, seed=model.seed,
        device=resolve_device(model.device).type,
    )
    return trainer, loader


def train(
    recipe: Recipe,
    output_dir: str | Path | None = None,
    resume: str | Path | None = None,
    max_steps: int | None = None,
    progress: bool = True,
    callbacks: Sequence[Callable] = (),
) -> Path:
    """Train the recipe's components jointly (Algorithm 1) and export their weights.

    ``resume`` is a checkpoint folder, or ``"latest"`` for the newest one of this run.
    ``callbacks`` see every step's :class:`~ouroboros_core.trainer.TrainStepInfo` (on every
    process). Under ``accelerate launch`` every process trains; only the main one writes the
    run folder (recipe, log, TensorBoard, checkpoints, exported weights). Returns the run folder.
    """
    _check_data(recipe)
    if max_steps is not None:  # one end for the loop, the lr schedule and the saved recipe
        trainer_cfg = recipe.model.trainer.model_copy(update={"max_steps": max_steps})
        recipe = dataclasses.replace(recipe, model=recipe.model.model_copy(update={"trainer": trainer_cfg}))
    model = recipe.model
    cfg = model.trainer
    run_dir = Path(output_dir or cfg.output_dir)
    trainer, loader = build_trainer(recipe)
    if trainer.sharded and cfg.validate_every:
        raise RecipeError(
            "trainer.validate_every does not work under FSDP: the validation image is generated on the main "
            "process alone, outside the training pass, where each process holds only shards of the weights",
            hint="set trainer.validate_every=0 (the TensorBoard scalars stay) or validate with the DDP config",
        )
    checkpoints = run_dir / "checkpoints"
    if resume is not None:
        trainer.load_checkpoint(_latest_checkpoint(checkpoints) if str(resume) == "latest" else Path(resume))
    main = trainer.accelerator.is_main_process
    if main:
        recipe.save(run_dir)
    total = cfg.max_steps
    log_file = (run_dir / "log.jsonl").open("a") if main else None
    board = TrainingBoard(recipe, trainer, run_dir) if main and cfg.tensorboard else None
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=trainer.step, desc="training")

    def record(info) -> None:
        # "time": seconds since this process started training (a resumed run starts again at 0)
        line = {"step": info.step, "lr": info.lr, "time": round(time.perf_counter() - start, 3), **info.losses}
        if log_file is not None:
            log_file.write(json.dumps(line) + "\n")
            log_file.flush()
        if board is not None:
            board.record(info, line["time"])
        if bar is not None:
            bar.set_postfix(loss=f"{info.losses.get('total', math.nan):.4g}")
            bar.update(1)

    start = time.perf_counter()
    try:
        with attention_context(model.attention_backend):
            trainer.train(loader, max_steps=total, callbacks=[record, *callbacks], checkpoint_dir=checkpoints)
    finally:
        if log_file is not None:
            log_file.close()
        if board is not None:
            board.close()
        if bar is not None:
            bar.close()
    log.info("trained to step %d in %.1f s", trainer.step, time.perf_counter() - start)
    final = checkpoints / f"step-{trainer.step:08d}"
    # the trainer saves every checkpoint_every steps; keep the last one too. Every process takes
    # part (the save starts with a barrier, so no process sees the main one's new folder here)
    if not final.exists():
        trainer.save_checkpoint(final)
    # under FSDP the full weights are gathered from every process's shards, so all take part
    if main or trainer.sharded:
        if trainer.ema is not None and cfg.export_raw_weights:
            raw = trainer.full_state_dict()
            if main:
                export_weights(recipe, raw, run_dir, "weights-raw", "trained-raw.yaml")
            del raw
        with trainer.ema.applied() if trainer.ema is not None else contextlib.nullcontext():
            state = trainer.full_state_dict()
            if main:  # inside: without FSDP the state holds the live (averaged) tensors
                export_weights(recipe, state, run_dir)
    trainer.accelerator.wait_for_everyone()
    return run_dir


def dry_run(recipe: Recipe) -> dict[str, Any]:
    """Build everything ``train`` builds, run one optimiser step (``trainer.grad_accum``
    micro-batches) and report, writing nothing: parameters per component and per
    ``trainer.trainable`` prefix, peak memory and the seconds the step took."""
    import resource

    from .trainer import _matches

    _check_data(recipe)
    model = recipe.model
    cfg = model.trainer
    start = time.perf_counter()
    trainer, loader = build_trainer(recipe)
    build_s = time.perf_counter() - start
    named = list(trainer.components.named_parameters())
    components = {}
    for name, param in named:
        entry = components.setdefault(name.split(".")[0], {"total": 0, "trainable": 0})
        entry["total"] += param.numel()
        entry["trainable"] += param.numel() if param.requires_grad else 0
    groups = {prefix: sum(p.numel() for n, p in named if p.requires_grad and _matches(n, prefix)) for prefix in cfg.trainable}
    batches = iter(loader)
    micro = [next(batches) for _ in range(cfg.grad_accum)]
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
        torch.cuda.synchronize(trainer.device)
    start = time.perf_counter()
    with attention_context(model.attention_backend):
        losses = trainer.train_step(micro)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    step_s = time.perf_counter() - start
    report: dict[str, Any] = {
        "recipe": recipe.name,
        "device": str(trainer.device),
        "processes": trainer.accelerator.num_processes,
        "parameters": components,
        "trainable_groups": groups,
        "trainable": sum(c["trainable"] for c in components.values()),
        "build_s": round(build_s, 3),
        "step_s": round(step_s, 3),
        "losses": losses,
        # Linux reports ru_maxrss in KiB
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    if trainer.device.type == "cuda":
        report["peak_gpu_gib"] = torch.cuda.max_memory_allocated(trainer.device) / 2**30
    return report
