"""Seconds per training step of a recipe under variants of its settings, measured in one run.

Each variant is the recipe plus its overrides, trained in its own process (accelerate keeps
one mixed-precision setting per process), from the same weights on the same batches with the
same seeds, so the self-conditioning coin falls alike. The processes take turns, a few steps
each, and only one computes at a time: a machine that gets busier slows every variant alike.
Batches are read before timing, so data loading is not measured. Prints the median seconds
per step of each variant and its ratio to the first.

The default recipe, ``tiny``, is the joint stage (``tiny-train``'s trainer) from the shipped
weights: a trained reconstructor's Gaussians render several times faster than random ones,
so time training from random weights only to time exactly that.

    python benchmarks/train_step.py
    python benchmarks/train_step.py --recipe tiny --variant fp32= --variant bf16=trainer.mixed_precision=bf16
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

DEFAULT_VARIANTS = [
    "fp32-sdpa=trainer.mixed_precision=no,attention_backend=sdpa",
    "fp32-math=trainer.mixed_precision=no,attention_backend=math",
    "bf16-sdpa=trainer.mixed_precision=bf16,attention_backend=sdpa",
    "bf16-math=trainer.mixed_precision=bf16,attention_backend=math",
]


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``name=key=value,key=value`` -> ``(name, ["key=value", ...])``."""
    name, _, overrides = text.partition("=")
    return name, [o for o in overrides.split(",") if o]


def worker(conn, recipe_name: str, overrides: list[str], n_batches: int) -> None:
    """Build the trainer, then on each request ``(first, count)`` time ``count`` steps on
    batches ``first...`` and send the seconds back; ``None`` ends it."""
    import torch

    from ouroboros_core.build import attention_context
    from ouroboros_core.recipe import load_recipe
    from ouroboros_core.runs import build_trainer

    recipe = load_recipe(recipe_name, overrides)
    trainer, loader = build_trainer(recipe, num_workers=0)
    batches_in = iter(loader)
    batches = [[next(batches_in) for _ in range(recipe.model.trainer.grad_accum)] for _ in range(n_batches)]
    device = trainer.device
    conn.send(torch.get_num_threads())
    while (request := conn.recv()) is not None:
        first, count = request
        times = []
        with attention_context(recipe.model.attention_backend):
            for micro in batches[first : first + count]:
                start = time.perf_counter()
                trainer.train_step(micro)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - start)
        conn.send(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override for every variant")
    parser.add_argument("--variant", action="append", help="NAME=OVERRIDE,OVERRIDE (repeatable; default: fp32/bf16 x sdpa/math)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    args = parser.parse_args()

    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    n_batches = args.warmup + args.rounds * args.steps
    ctx = mp.get_context("spawn")
    runs = []
    for name, overrides in variants:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(child, args.recipe, [*args.overrides, *overrides], n_batches), daemon=True)
        proc.start()
        threads = parent.recv()  # built: the workers build one after another, not side by side
        runs.append({"name": name, "overrides": overrides, "conn": parent, "proc": proc, "times": []})
    for run in runs:
        run["conn"].send((0, args.warmup))
        run["conn"].recv()
    for r in range(args.rounds):
        for run in runs:
            run["conn"].send((args.warmup + r * args.steps, args.steps))
            run["times"] += run["conn"].recv()
    for run in runs:
        run["conn"].send(None)
        run["proc"].join()

    first = statistics.median(runs[0]["times"])
    print(f"recipe {args.recipe}, {threads} threads per process, {args.rounds} rounds x {args.steps} steps per variant")
    print(f"{'variant':<14} {'median s/step':>14} {'ratio':>7}   overrides")
    for run in runs:
        med = statistics.median(run["times"])
        print(f"{run['name']:<14} {med:>14.3f} {med / first:>7.2f}   {','.join(run['overrides'])}")


if __name__ == "__main__":
    main()
