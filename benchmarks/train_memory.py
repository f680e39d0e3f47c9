"""Per-GPU memory of training a recipe, computed from parameter counts (no GPU, no weights).

The components are built on PyTorch's ``meta`` device from the recipe's configs (weights set
to null), so the full-size reference pair costs nothing to count. Which parameters train is
the recipe's ``trainer.trainable``; the rest (SVD's VAE and image encoder) are frozen.

Bytes per parameter (AdamW, fp32 master weights, ``trainer.mixed_precision`` autocast, which
is how ``ouroboros3d train`` builds and places the model):

- DDP (and one GPU): trainable 4 weight + 4 gradient + 8 Adam moments = 16, plus 4 for DDP's
  gradient buckets (not on one GPU); frozen 4.
- DeepSpeed ZeRO-2 (bf16): trainable 2 (bf16 weights) + (2 bf16 gradient + 4 fp32 master +
  8 Adam) / N (the ZeRO paper's 2 + 14/N with its K = 12 counted as master + moments); frozen 2.
- FSDP full shard: everything sharded, 16 / N per trainable and 4 / N per frozen parameter,
  plus the largest wrapped unit gathered in bf16 while it runs (not counted).
- EMA adds an fp32 copy of the trainable parameters (4) on every GPU.

Activations are NOT included: they depend on resolution, views and gradient checkpointing
and need a measurement on a GPU (``ouroboros3d train --dry-run`` prints the peak there).

    python benchmarks/train_memory.py --recipe svd-lgm-paper --gpus 8
"""

from __future__ import annotations

import argparse
import json

import torch

GIB = 2**30


def parameter_counts(recipe) -> dict[str, dict[str, int]]:
    """``{component: {"total": n, "trainable": n}}`` under the recipe's ``trainer.trainable``."""
    from ouroboros_core.build import build_components
    from ouroboros_core.trainer import COMPONENT_NAMES, _matches

    with torch.device("meta"):
        parts = build_components(recipe, device=torch.device("meta"), dtype=torch.float32)
    modules = torch.nn.ModuleDict(
        {"generator": parts.generator, "reconstructor": parts.reconstructor, "feedback": torch.nn.ModuleList(parts.encoders)}
    )
    counts = {name: {"total": 0, "trainable": 0} for name in COMPONENT_NAMES}
    for name, param in modules.named_parameters():
        top = name.split(".")[0]
        counts[top]["total"] += param.numel()
        if param.requires_grad and any(_matches(name, p) for p in recipe.model.trainer.trainable):
            counts[top]["trainable"] += param.numel()
    return counts


def per_gpu_bytes(trainable: int, frozen: int, strategy: str, gpus: int, ema: bool = False) -> float:
    """Bytes of weights, gradients and optimizer state on one GPU (see the module docstring)."""
    if strategy == "single":
        b = 16 * trainable + 4 * frozen
    elif strategy == "ddp":
        b = 20 * trainable + 4 * frozen
    elif strategy == "zero2":
        b = (2 + 14 / gpus) * trainable + 2 * frozen
    elif strategy == "fsdp":
        b = 16 / gpus * trainable + 4 / gpus * frozen
    else:
        raise ValueError(strategy)
    return b + (4 * trainable if ema else 0)


def main() -> None:
    from ouroboros_core.recipe import load_recipe

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="svd-lgm-paper")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    probe = load_recipe(args.recipe, args.set)
    nulls = ["generator.weights=null", "reconstructor.weights=null"] + [f"feedback.{i}.weights=null" for i in range(len(probe.model.feedback))]
    recipe = load_recipe(args.recipe, [*args.set, *nulls])
    counts = parameter_counts(recipe)
    trainable = sum(c["trainable"] for c in counts.values())
    frozen = sum(c["total"] for c in counts.values()) - trainable
    ema = bool(recipe.model.trainer.ema_decay)
    report = {
        "recipe": recipe.name,
        "parameters": counts,
        "trainable": trainable,
        "frozen": frozen,
        "gpus": args.gpus,
        "per_gpu_gib_without_activations": {
            "single": per_gpu_bytes(trainable, frozen, "single", 1, ema) / GIB,
            "ddp": per_gpu_bytes(trainable, frozen, "ddp", args.gpus, ema) / GIB,
            "zero2": per_gpu_bytes(trainable, frozen, "zero2", args.gpus, ema) / GIB,
            "fsdp": per_gpu_bytes(trainable, frozen, "fsdp", args.gpus, ema) / GIB,
        },
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
