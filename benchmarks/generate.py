"""Time one image-to-3D generation per stage, for sampler modes "none" and "joint".

Weights are random (``--set *.weights=null`` is applied), so full-size models can be timed
without downloading anything. Both modes run in the same process on the same input, so the
joint/none ratio is the feedback overhead measured under the same conditions.

    python benchmarks/generate.py --recipe tiny
    python benchmarks/generate.py --recipe svd-lgm --device cuda --dtype bf16 --steps 25
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch

from ouroboros_core.pipeline import ImageTo3DPipeline
from ouroboros_core.recipe import load_recipe
from ouroboros_core.sampler import STAGES



def test_image(size: int = 256) -> np.ndarray:
    """A synthetic RGBA object (a shaded disc) so no file is needed."""
    y, x = np.mgrid[:size, :size] / size - 0.5
    inside = (x**2 + y**2) < 0.3**2
    rgba = np.zeros((size, size, 4), np.float32)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 0.6 - y, 0.5 + x, 0.3  # in [0.1, 1] inside
    rgba[..., 3] = inside
    rgba[..., :3] *= inside[..., None]
    return rgba


def run(args: argparse.Namespace, mode: str) -> dict[str, float]:
    recipe = load_recipe(args.recipe, [*args.set, f"sampler.mode={mode}", f"sampler.steps={args.steps}"] + _no_weights(args))
    pipe = ImageTo3DPipeline.from_recipe(recipe)
    image = test_image()
    for _ in range(args.warmup):
        pipe(image, seed=0)
    runs = []
    for i in range(args.repeats):
        start = time.perf_counter()
        result = pipe(image, seed=i)
        total = time.perf_counter() - start
        runs.append({**{s: result.timings.get(f"sampler.{s}", 0.0) for s in STAGES}, "total": total})
    best = min(runs, key=lambda r: r["total"])
    if pipe.device.type == "cuda":
        best["peak_gpu_gib"] = torch.cuda.max_memory_allocated(pipe.device) / 2**30
    best["reconstructions"] = float(result.manifest["num_reconstructions"])
    return best


def _no_weights(args: argparse.Namespace) -> list[str]:
    recipe = load_recipe(args.recipe, args.set)
    sets = ["generator.weights=null", "reconstructor.weights=null"]
    sets += [f"feedback.{i}.weights=null" for i in range(len(recipe.model.feedback))]
    return sets + ([f"device={args.device}"] if args.device else []) + ([f"dtype={args.dtype}"] if args.dtype else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="tiny")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_grad_enabled(False)
    results = {mode: run(args, mode) for mode in ("none", "joint")}
    keys = [*STAGES, "total", "reconstructions"] + (["peak_gpu_gib"] if "peak_gpu_gib" in results["joint"] else [])
    print(f"recipe={args.recipe} steps={args.steps} threads={torch.get_num_threads()}")
    print(f"{'stage':<16}{'none [s]':>12}{'joint [s]':>12}")
    for key in keys:
        print(f"{key:<16}{results['none'][key]:>12.3f}{results['joint'][key]:>12.3f}")
    print(f"feedback overhead joint/none: {results['joint']['total'] / results['none']['total']:.3f}")


if __name__ == "__main__":
    main()
