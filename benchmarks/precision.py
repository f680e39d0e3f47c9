"""Half-precision drift against fp32: one guided sampling step, then whole generations.

Precision modes (recipe keys ``dtype`` and ``autocast``):

- ``fp32``: everything in fp32 (the reference);
- ``autocast-fp16`` / ``autocast-bf16``: fp32 weights, the loop's models under torch.autocast,
  conditioning (CLIP, VAE encoder) and rendering in fp32 (``autocast: true``; the official
  script runs autocast-fp16);
- ``cast-fp16`` / ``cast-bf16``: every module cast to the dtype (``autocast: false``; SVD's
  VAE encoder upcast to fp32 for fp16 because its config sets ``force_upcast``).

Part 1, one guided step: the tiny SVD generator in official mode (CLIP, temporal VAE, Plücker
rays, guidance ramp 1 -> 3 as a batch-2 CFG call) with two tiny adapters, random weights (one
per seed), at noise levels of svd-lgm's 25-step schedule. Each mode prepares the conditioning
itself, encodes the same feedback maps, predicts the guided x0, takes the Euler step and
decodes x0 (the precision contexts are the sampler's: prepare outside autocast, the rest
inside). Printed per mode and sigma, worst over the seeds:

- ``x0 max`` / ``x0 rms``: ``max|dx0| / max|x0|`` and ``||dx0|| / ||x0||`` against fp32;
- ``step``: ``||dx_next|| / ||x_next - x||``, the error relative to the step's own update;
- ``pixels``: max abs difference of the decoded x0 in [0, 1] pixel units.

Part 2, whole generations: a recipe (default: the shipped trained ``tiny``) on an image,
every mode against fp32: the views' max abs difference and PSNR, and the wall time.

    python benchmarks/precision.py [--device cpu|cuda] [--size 32] [--seeds 3]
        [--recipe tiny] [--image examples/toy-object.png] [--modes ...] [--skip-generate]

On a CPU, fp16 kernels are far slower than fp32 (torch runs many of them without vector
units); the drift numbers do not depend on that.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from pathlib import Path

import torch

from ouroboros_core.build import DTYPES
from ouroboros_core.cameras import Cameras
from ouroboros_core.edm import euler_step, karras_sigmas
from ouroboros_core.interfaces import encode_feedback
from ouroboros_core.registry import get_registry

MODES = ("fp32", "autocast-fp16", "autocast-bf16", "cast-fp16", "cast-bf16")
#: steps 0, 6, 12 and 18 of svd-lgm's 25-step Karras schedule (sigma 700 -> 0.002)
STEP_INDICES = (0, 6, 12, 18)
ROOT = Path(__file__).resolve().parents[1]


def parse_mode(mode: str) -> tuple[torch.dtype, bool]:
    """``(dtype, autocast)`` of a mode name."""
    if mode == "fp32":
        return torch.float32, False
    how, name = mode.split("-")
    return DTYPES[name], how == "autocast"


def mode_overrides(mode: str) -> list[str]:
    """The recipe overrides that select ``mode``."""
    if mode == "fp32":
        return ["dtype=fp32", "autocast=false"]
    how, name = mode.split("-")
    return [f"dtype={name}", f"autocast={'true' if how == 'autocast' else 'false'}"]


def build_models(seed: int, size: int, device: torch.device, dtype: torch.dtype):
    """The tiny official-mode SVD generator and its two tiny adapters, weights from ``seed``."""
    registry = get_registry()
    torch.manual_seed(seed)
    gen = registry.get("generator", "svd").build({"image_size": size}, preset="tiny-official")
    adapter = registry.get("feedback", "adapter")
    encoders = [adapter.build({"map_kind": kind}, preset="tiny") for kind in ("rgb", "ccm")]
    return [m.to(device=device, dtype=dtype).eval() for m in (gen, *encoders)]


@torch.no_grad()
def guided_step(mode: str, seed: int, size: int, device: torch.device, sigmas: torch.Tensor) -> dict[int, dict[str, torch.Tensor]]:
    """x0, x_next and the decoded x0 of one step at each of :data:`STEP_INDICES` in ``mode``."""
    dtype, autocast = parse_mode(mode)
    gen, *encoders = build_models(seed, size, device, torch.float32 if autocast else dtype)
    amp = torch.autocast(device.type, dtype=dtype) if autocast else contextlib.nullcontext()
    rng = lambda offset: torch.Generator().manual_seed(1000 * seed + offset)  # noqa: E731
    cameras = Cameras.official(device=device)
    image = torch.rand(1, 3, size, size, generator=rng(1)).to(device)
    ctx = gen.prepare(image, cameras, generator=rng(2))  # the sampler's prepare stage: no autocast
    maps = {kind: torch.rand(1, 8, 3, size, size, generator=rng(3 + k)).to(device) for k, kind in enumerate(("rgb", "ccm"))}
    noise = torch.randn(ctx.latent_shape, generator=rng(5)).to(device)
    out = {}
    for i in STEP_INDICES:
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x = noise * s
        with amp:
            feats = encode_feedback(encoders, maps)
            x0 = gen.denoise(x, torch.full((1,), s, device=device), ctx, feats).float()
            pixels = gen.decode(x0).float()
        out[i] = {"x": x, "x0": x0, "x_next": euler_step(x, x0, s, s_next), "pixels": pixels}
    return out


def step_drift(args: argparse.Namespace, device: torch.device) -> None:
    sigmas = karras_sigmas(25, 0.002, 700.0, dtype=torch.float64)
    print(f"one guided step: tiny-official SVD + 2 tiny adapters, {args.size}^2, 8 views, CFG ramp 1 -> 3, "
          f"random weights, worst of {args.seeds} seeds, {device}")
    print(f"{'mode':<15}{'sigma':>9}{'x0 max':>11}{'x0 rms':>11}{'step':>11}{'pixels':>11}{'time s':>9}")
    references = {seed: guided_step("fp32", seed, args.size, device, sigmas) for seed in range(args.seeds)}
    for mode in args.modes:
        if mode == "fp32":
            continue
        start = time.perf_counter()
        results = {seed: guided_step(mode, seed, args.size, device, sigmas) for seed in range(args.seeds)}
        elapsed = (time.perf_counter() - start) / args.seeds
        for i in STEP_INDICES:
            worst = {"x0 max": 0.0, "x0 rms": 0.0, "step": 0.0, "pixels": 0.0}
            for seed in range(args.seeds):
                ref, got = references[seed][i], results[seed][i]
                dx0 = got["x0"] - ref["x0"]
                worst["x0 max"] = max(worst["x0 max"], float(dx0.abs().max() / ref["x0"].abs().max()))
                worst["x0 rms"] = max(worst["x0 rms"], float(dx0.norm() / ref["x0"].norm()))
                worst["step"] = max(worst["step"], float((got["x_next"] - ref["x_next"]).norm() / (ref["x_next"] - ref["x"]).norm()))
                worst["pixels"] = max(worst["pixels"], float((got["pixels"] - ref["pixels"]).abs().max()))
            values = "".join(f"{v:>11.2e}" for v in worst.values())
            print(f"{mode:<15}{float(sigmas[i]):>9.4g}{values}{elapsed:>9.2f}")


def generate_drift(args: argparse.Namespace, device: torch.device) -> None:
    from ouroboros_core.pipeline import ImageTo3DPipeline

    print(f"\nwhole generations: recipe {args.recipe}, {args.image}, {device}")
    print(f"{'mode':<15}{'max |dv|':>10}{'PSNR dB':>9}{'time s':>9}")
    reference = None
    for mode in ("fp32", *[m for m in args.modes if m != "fp32"]):
        pipe = ImageTo3DPipeline.from_recipe(args.recipe, mode_overrides(mode), device=str(device))
        pipe(args.image, seed=0)  # warm-up
        start = time.perf_counter()
        views = pipe(args.image, seed=0).views
        elapsed = time.perf_counter() - start
        if reference is None:
            reference = views
            print(f"{mode:<15}{'-':>10}{'-':>9}{elapsed:>9.2f}")
            continue
        mse = float(((views - reference) ** 2).mean())
        psnr = 10 * math.log10(1 / mse) if mse > 0 else math.inf
        print(f"{mode:<15}{float((views - reference).abs().max()):>10.4f}{psnr:>9.1f}{elapsed:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=32, help="image size of the one-step model")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--recipe", default="tiny")
    parser.add_argument("--image", default=str(ROOT / "examples" / "toy-object.png"))
    parser.add_argument("--skip-generate", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    step_drift(args, device)
    if not args.skip_generate:
        generate_drift(args, device)


if __name__ == "__main__":
    main()
