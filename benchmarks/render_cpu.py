"""Time the pure-torch Gaussian rasterizer on the CPU.

Prints the forward time (median of several runs) for 16k Gaussians at 128x128 and 65k
Gaussians at 256x256 (one camera of the official orbit), the time of one forward+backward
pass, and the peak resident memory of the process. Target (DESIGN.md): 16k at 128^2 in
<= 0.5 s on a 2-core CPU.

    python benchmarks/render_cpu.py [--threads N] [--repeats R] [--views V]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from ouroboros_core.cameras import Cameras
from ouroboros_core.render_torch import rasterize_gaussians


def object_like_cloud(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Gaussians shaped like a reconstructor's output: a filled ball of radius 0.5 with
    log-uniform scales of 0.005-0.03 and mixed opacities."""
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=generator), dim=-1)
    radius = 0.5 * torch.rand(n, 1, generator=generator) ** (1 / 3)
    return {
        "means": direction * radius,
        "quats": torch.nn.functional.normalize(torch.randn(n, 4, generator=generator), dim=-1),
        "scales": torch.exp(torch.empty(n, 3).uniform_(torch.log(torch.tensor(0.005)).item(), torch.log(torch.tensor(0.03)).item(), generator=generator)),
        "opacities": torch.rand(n, generator=generator) * 0.95 + 0.05,
        "colors": torch.rand(n, 3, generator=generator),
    }


def render_args(n: int, size: int, views: int) -> tuple[dict[str, torch.Tensor], tuple]:
    cloud = object_like_cloud(n, torch.Generator().manual_seed(0))
    cams = Cameras.official()
    cams = Cameras(cams.c2w[:, :views], cams.intrinsics[:, :views])
    return cloud, (cams.w2c[0], cams.pixel_intrinsics(size, size)[0], size, size)


def time_forward(n: int, size: int, views: int, repeats: int) -> float:
    cloud, camera_args = render_args(n, size, views)
    bg = torch.ones(views, 3)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):  # the first call warms up
            t0 = time.perf_counter()
            rasterize_gaussians(*cloud.values(), *camera_args, backgrounds=bg)
            if i:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_forward_backward(n: int, size: int, views: int) -> float:
    cloud, camera_args = render_args(n, size, views)
    leaves = [v.clone().requires_grad_(True) for v in cloud.values()]
    t0 = time.perf_counter()
    rgb, alpha, _ = rasterize_gaussians(*leaves, *camera_args, backgrounds=torch.ones(views, 3))
    (rgb.mean() + alpha.mean()).backward()
    return time.perf_counter() - t0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--views", type=int, default=1, help="cameras rendered per call")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [(16_384, 128), (65_536, 256)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.views} view(s) per call")
    print(f"peak resident memory after importing torch: {peak_rss_mib():.0f} MiB")
    for n, size in cases:
        t = time_forward(n, size, args.views, args.repeats)
        print(f"{n:>6} Gaussians at {size}x{size}: forward {t:.3f} s (median of {args.repeats})")
    print(f"peak resident memory after the forward passes: {peak_rss_mib():.0f} MiB")
    for n, size in cases:
        print(f"{n:>6} Gaussians at {size}x{size}: forward+backward {time_forward_backward(n, size, args.views):.3f} s")
    print(f"peak resident memory after the backward passes: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
