"""The CUDA checks of issues 3-5 in one script, for a session that is lent a GPU.

1. gsplat vs the torch rasterizer on the same LGM Gaussians (max pixel differences);
2. LGM (``big`` / ``official``, random init) reconstruct time at batch 1 in fp16 and bf16;
3. one denoise call of the full-size SVD generator (random init) on 8 views at 64x64 latents,
   with and without the two feedback encoders, and the VAE decode of 8 frames.

Weights are random, so nothing is downloaded. ``--tiny`` runs the same code with the tiny
presets (on the CPU: a smoke test of this script; gsplat is skipped without CUDA).
The full pipeline is timed separately by ``benchmarks/generate.py``.

    python benchmarks/gpu_check.py            # on the GPU machine
    python benchmarks/gpu_check.py --tiny     # smoke test anywhere
"""

from __future__ import annotations

import argparse
import time

import torch

from ouroboros_core.build import DTYPES
from ouroboros_core.cameras import Cameras
from ouroboros_core.gaussians import gsplat_available
from ouroboros_core.interfaces import encode_feedback
from ouroboros_core.registry import get_registry

HALF = ("fp16", "bf16")


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def check_renderers(args, device: torch.device) -> None:
    spec = get_registry().get("reconstructor", "lgm")
    torch.manual_seed(0)
    lgm = spec.build(preset="tiny" if args.tiny else "official").to(device).eval()
    size = lgm.config.input_size
    cams = Cameras.official(device=device).select_views(lgm.config.input_views)
    with torch.no_grad():
        cloud = lgm.reconstruct(torch.rand(1, len(lgm.config.input_views), 3, size, size, device=device), cams)
    render_size = 64 if args.tiny else 512
    full = Cameras.official(device=device)
    torch_out = cloud.render(full, render_size, render_size, backend="torch")
    print(f"[render] {cloud.num_gaussians} Gaussians, 8 views at {render_size}^2, raw quaternions={cloud.raw_quaternions}")
    print(f"  torch backend: {timed(lambda: cloud.render(full, render_size, render_size, backend='torch'), args.repeats, device):.4f} s")
    if device.type != "cuda" or not gsplat_available():
        print("  gsplat: skipped (needs CUDA and gsplat)")
        return
    start = time.perf_counter()
    gs_out = cloud.render(full, render_size, render_size, backend="gsplat")
    print(f"  gsplat first call (includes its JIT build): {time.perf_counter() - start:.1f} s")
    print(f"  gsplat backend: {timed(lambda: cloud.render(full, render_size, render_size, backend='gsplat'), args.repeats, device):.4f} s")
    for name in ("rgb", "alpha", "depth"):
        diff = (getattr(gs_out, name) - getattr(torch_out, name)).abs()
        print(f"  max |gsplat - torch| {name}: {diff.max().item():.2e} (mean {diff.mean().item():.2e})")


def time_lgm(args, device: torch.device) -> None:
    for dtype_name in args.dtypes:  # one model per dtype, freed before the next is built
        _time_lgm(args, device, DTYPES[dtype_name], dtype_name)


def _time_lgm(args, device: torch.device, dtype: torch.dtype, dtype_name: str) -> None:
    torch.manual_seed(0)
    spec = get_registry().get("reconstructor", "lgm")
    lgm = spec.build(preset="tiny" if args.tiny else "official").to(device=device, dtype=dtype).eval()
    size = lgm.config.input_size
    views = torch.rand(1, 4, 3, size, size, device=device, dtype=dtype)
    cams = Cameras.official(device=device).select_views(lgm.config.input_views)
    sigma = torch.tensor([1.0], device=device)
    with torch.no_grad():
        t = timed(lambda: lgm.reconstruct(views, cams, sigma), args.repeats, device)
    print(f"[lgm {'tiny' if args.tiny else 'official/big'}] batch 1, 4 views {size}^2, {dtype_name}: {t:.4f} s")


def time_svd(args, device: torch.device) -> None:
    for dtype_name in args.dtypes:
        _time_svd(args, device, DTYPES[dtype_name], dtype_name)


def _time_svd(args, device: torch.device, dtype: torch.dtype, dtype_name: str) -> None:
    registry = get_registry()
    gen_spec, enc_spec = registry.get("generator", "svd"), registry.get("feedback", "adapter")
    torch.manual_seed(0)
    preset = "tiny-official" if args.tiny else "official"
    gen = gen_spec.build(gen_spec.make_config({"base_weights": None}, preset)).to(device=device, dtype=dtype).eval()
    encoders = [
        enc_spec.build({"map_kind": kind}, "tiny" if args.tiny else "official").to(device=device, dtype=dtype).eval()
        for kind in ("rgb", "ccm")
    ]
    S = gen.image_size
    with torch.no_grad():
        ctx = gen.prepare(torch.rand(1, 3, S, S, device=device, dtype=dtype), Cameras.official(device=device))
        x = torch.randn(ctx.latent_shape, device=device, dtype=dtype)
        sigma = torch.tensor([10.0], device=device)
        maps = {kind: torch.rand(1, 8, 3, S, S, device=device, dtype=dtype) for kind in ("rgb", "ccm")}
        plain = timed(lambda: gen.denoise(x, sigma, ctx, None), args.repeats, device)
        fed = timed(lambda: gen.denoise(x, sigma, ctx, encode_feedback(encoders, maps)), args.repeats, device)
        decode = timed(lambda: gen.decode(x), args.repeats, device)
    peak = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
    print(
        f"[svd {preset}] 8 views, latents {tuple(x.shape[-2:])}, {dtype_name}: denoise (CFG batch) {plain:.4f} s, "
        f"with 2 feedback encoders {fed:.4f} s, VAE decode of 8 frames {decode:.4f} s{peak}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny presets (smoke test of this script)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp16"], choices=HALF)
    parser.add_argument("--only", nargs="+", default=["render", "lgm", "svd"], choices=["render", "lgm", "svd"])
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}")
    for name, check in (("render", check_renderers), ("lgm", time_lgm), ("svd", time_svd)):
        if name in args.only:
            check(args, device)


if __name__ == "__main__":
    main()
