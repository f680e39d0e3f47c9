"""Where does a reconstructor lose PSNR on true views? (the diagnostic behind README "The tiny model").

    python tools/reconstruction_probe.py --recipe tiny --set trainer.data.kind=official \
        --set trainer.data.root=data/tiny/heldout --objects 20

The reconstructor gets each object's *true* input views (what ``evaluate`` calls
``oracle-views``) and its 3D is rendered at every view. Printed:

1. PSNR per view (MSE pooled over the objects), input views marked: are novel views the
   weak ones (geometry), or the input views too (appearance, blur)?
2. For a Gaussian reconstructor whose Gaussians come in one equal block per input view, in
   input-view order (LGM's splat images), each input view rendered from all Gaussians and
   from its own block only: what the other views' Gaussians cost it.
3. The squared error by region, from the true alpha: object pixels, then background rings
   at 1 pixel and 2-3 pixels from the silhouette, then the rest. A share far above the
   region's share of pixels says where the error sits.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
import torch.nn.functional as F

#: (name, ring width in pixels): background within this many pixels of the silhouette
RINGS = (("background within 1 px", 1), ("background 2-3 px", 3))


def psnr(mse: float) -> float:
    return float(-10 * torch.log10(torch.tensor(mse)))


def regions(alpha: torch.Tensor) -> dict[str, torch.Tensor]:
    """Disjoint masks ``(V, H, W)`` covering every pixel: the object, rings around it, the rest."""
    inside = (alpha > 0.5).float()
    masks, covered = {"object": inside}, inside
    for name, width in RINGS:
        grown = F.max_pool2d(inside[:, None], 2 * width + 1, 1, width)[:, 0]
        masks[name] = grown - covered
        covered = grown
    masks["background farther"] = 1 - covered
    return masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--objects", type=int, default=20)
    args = parser.parse_args()

    from ouroboros_core.data import collate_multiview
    from ouroboros_core.gaussians import GaussianCloud
    from ouroboros_core.pipeline import ImageTo3DPipeline
    from ouroboros_core.recipe import load_recipe
    from ouroboros_core.runs import _dataset

    recipe = load_recipe(args.recipe, args.overrides)
    reconstructor = ImageTo3DPipeline.from_recipe(recipe).reconstructor
    dataset = _dataset(recipe, random_start_view=False)
    count = min(args.objects, len(dataset))
    per_view: torch.Tensor | None = None
    own = {"all Gaussians": 0.0, "its own block only": 0.0}
    error_sum: dict[str, float] = {}
    pixel_sum: dict[str, float] = {}
    with torch.no_grad():
        for index in range(count):
            item = collate_multiview([dataset[index]])
            gt, alpha, cams = item["images"].float(), item["alpha"].float(), item["cameras"]
            H, W = gt.shape[-2:]
            idx = reconstructor.input_views or list(range(gt.shape[1]))
            rep = reconstructor.reconstruct(gt[:, idx], cams.select_views(idx), None)
            error = ((rep.render(cams, H, W, background=1.0).rgb.float().clamp(0, 1) - gt) ** 2).mean(2)[0]
            per_view = error.mean((1, 2)) if per_view is None else per_view + error.mean((1, 2))
            for name, mask in regions(alpha[0, :, 0]).items():
                error_sum[name] = error_sum.get(name, 0.0) + float((error * mask).sum())
                pixel_sum[name] = pixel_sum.get(name, 0.0) + float(mask.sum())
            if isinstance(rep, GaussianCloud) and rep.num_gaussians % len(idx) == 0:
                block = rep.num_gaussians // len(idx)
                for k, view in enumerate(idx):
                    cam, target = cams.select_views([view]), gt[:, view : view + 1]
                    keep = torch.zeros_like(rep.opacities)
                    keep[:, k * block : (k + 1) * block] = 1
                    for name, cloud in (("all Gaussians", rep), ("its own block only", replace(rep, opacities=rep.opacities * keep))):
                        render = cloud.render(cam, H, W, background=1.0).rgb.float().clamp(0, 1)
                        own[name] += float(((render - target) ** 2).mean()) / (count * len(idx))

    assert per_view is not None, "the dataset has no objects"
    per_view = per_view / count
    print(f"oracle 3D on {count} objects: PSNR per view (input views {idx} marked *)")
    print("| view | " + " | ".join(f"{v}{'*' if v in idx else ''}" for v in range(len(per_view))) + " | all |")
    print("|---|" + "---:|" * (len(per_view) + 1))
    print("| PSNR | " + " | ".join(f"{psnr(float(m)):.2f}" for m in per_view) + f" | {psnr(float(per_view.mean())):.2f} |")
    if own["all Gaussians"] > 0:
        print("\ninput views rendered from:")
        for name, mse in own.items():
            print(f"- {name}: PSNR {psnr(mse):.2f}")
    total_error, total_pixels = sum(error_sum.values()), sum(pixel_sum.values())
    print("\n| region | share of pixels | share of squared error | MSE |")
    print("|---|---:|---:|---:|")
    for name in error_sum:
        n = max(pixel_sum[name], 1.0)
        print(f"| {name} | {pixel_sum[name] / total_pixels:.3f} | {error_sum[name] / total_error:.2f} | {error_sum[name] / n:.4f} |")


if __name__ == "__main__":
    main()
