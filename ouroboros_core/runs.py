"""Training runs driven by a recipe (what ``ouroboros3d train`` does; evaluation is
:mod:`ouroboros_core.evaluation`).

A training run folder holds everything needed to continue or use it::

    <run>/recipe.yaml              the resolved recipe
    <run>/log.jsonl                one line of losses (and seconds since start) per optimiser step
    <run>/checkpoints/step-N/      resumable trainer state (safetensors + JSON)
    <run>/weights/<part>.safetensors  each component's weights (EMA when enabled)
    <run>/trained.yaml             a recipe using those weights: ``generate --recipe <run>/trained.yaml``
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from .build import build_components, resolve_device
from .data import build_dataset, make_dataloader
from .errors import RecipeError, UserError
from .recipe import Recipe

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


def export_weights(recipe: Recipe, modules: list[torch.nn.Module], run_dir: Path) -> Path:
    """Write ``weights/<part>.safetensors`` and ``trained.yaml`` (a recipe that loads them)."""
    from safetensors.torch import save_file

    from .io.atomic import atomic_write

    weights = run_dir / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    for part, module in zip(component_parts(recipe), modules):
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
        with atomic_write(weights / f"{part}.safetensors") as tmp:
            save_file(tensors, str(tmp))
    trained = recipe.to_dict()
    trained["name"] = f"{recipe.name}-trained"
    trained["generator"]["weights"] = "./weights/generator.safetensors"
    trained["reconstructor"]["weights"] = "./weights/reconstructor.safetensors"
    for i, entry in enumerate(trained["feedback"]):
        entry["weights"] = f"./weights/feedback-{i}.safetensors"
    target = run_dir / "trained.yaml"
    with atomic_write(target) as tmp:
        tmp.write_text(yaml.safe_dump(trained, sort_keys=False))
    return target


def train(
    recipe: Recipe,
    output_dir: str | Path | None = None,
    resume: str | Path | None = None,
    max_steps: int | None = None,
    progress: bool = True,
) -> Path:
    """Train the recipe's components jointly (Algorithm 1) and export their weights.

    ``resume`` is a checkpoint folder, or ``"latest"`` for the newest one of this run.
    Returns the run folder.
    """
    from .trainer import JointTrainer

    _check_data(recipe)
    model = recipe.model
    cfg = model.trainer
    run_dir = Path(output_dir or cfg.output_dir)
    device = resolve_device(model.device)
    # built on the CPU in fp32 (master weights); the accelerator places them on this
    # process's device (cuda:<local rank> under `accelerate launch`)
    parts = build_components(recipe, device=torch.device("cpu"), dtype=torch.float32)
    dataset = _dataset(recipe)
    loader = make_dataloader(dataset, cfg.batch_size, seed=model.seed)
    trainer = JointTrainer(
        parts.generator, parts.reconstructor, parts.encoders, cfg, model.maps, seed=model.seed, device=device.type
    )
    checkpoints = run_dir / "checkpoints"
    if resume is not None:
        trainer.load_checkpoint(_latest_checkpoint(checkpoints) if str(resume) == "latest" else Path(resume))
    recipe.save(run_dir)
    total = cfg.max_steps if max_steps is None else max_steps
    log_file = (run_dir / "log.jsonl").open("a")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=trainer.step, desc="training")

    def record(info) -> None:
        # "time": seconds since this process started training (a resumed run starts again at 0)
        line = {"step": info.step, "lr": info.lr, "time": round(time.perf_counter() - start, 3), **info.losses}
        log_file.write(json.dumps(line) + "\n")
        log_file.flush()
        if bar is not None:
            bar.set_postfix(loss=f"{info.losses.get('total', math.nan):.4g}")
            bar.update(1)

    start = time.perf_counter()
    try:
        trainer.train(loader, max_steps=total, callbacks=[record], checkpoint_dir=checkpoints)
    finally:
        log_file.close()
        if bar is not None:
            bar.close()
    log.info("trained to step %d in %.1f s", trainer.step, time.perf_counter() - start)
    final = checkpoints / f"step-{trainer.step:08d}"
    if not final.exists():  # the trainer saves every checkpoint_every steps; keep the last one too
        trainer.save_checkpoint(final)
    components = trainer.components
    with trainer.ema.applied() if trainer.ema is not None else contextlib.nullcontext():
        modules = [components["generator"], components["reconstructor"], *components["feedback"]]
        export_weights(recipe, modules, run_dir)
    return run_dir
