"""Does a generator take its input's colours? (the diagnostic behind README "The tiny model").

    python tools/conditioning_probe.py --recipe tiny --set trainer.data.kind=official \
        --set trainer.data.root=data/tiny/heldout --objects 3

For each object, the ground-truth views are noised at a few sigmas and denoised once, with the
object's view 0 as the condition and again with that condition's red and blue channels
swapped. Printed: the mean colour of the predicted view 0 over the object's pixels, for both
conditions, beside the true mean colour. A generator that uses its condition's colours moves
its prediction towards the swapped colours; one that only uses the silhouette does not.

A second table puts the colour in proportion: per view, the MSE of the one-step x0 (views in
[0, 1], all objects, same noise) beside the MSE that removing all colour from the true views
costs (each pixel replaced by its grey mean). View 0 is the condition itself, so a generator
that copies its condition scores about 0 there.
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[20.0, 5.0])
    args = parser.parse_args()

    from ouroboros_core.data import collate_multiview
    from ouroboros_core.pipeline import ImageTo3DPipeline
    from ouroboros_core.recipe import load_recipe
    from ouroboros_core.runs import _dataset

    recipe = load_recipe(args.recipe, args.overrides)
    gen = ImageTo3DPipeline.from_recipe(recipe).generator
    dataset = _dataset(recipe, random_start_view=False)

    def object_mean(images: torch.Tensor, mask: torch.Tensor) -> list[float]:
        return [round(v, 3) for v in ((images * mask).sum((0, 2, 3)) / mask.sum()).tolist()]

    print("| object | sigma | condition | predicted view 0 (mean RGB on the object) | true |")
    print("|---|---:|---|---|---|")
    with torch.no_grad():
        for index in range(args.objects):
            item = collate_multiview([dataset[index]])
            gt, cams = item["images"].float(), item["cameras"]
            mask = (item["alpha"][:, 0].float() > 0.5).float()
            x0 = gen.encode(gt)
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(index))
            for sigma in args.sigmas:
                for name, cond in (("input", gt[:, 0]), ("input, R and B swapped", gt[:, 0].flip(1))):
                    ctx = gen.prepare(cond, cams, generator=torch.Generator().manual_seed(0))
                    view0 = gen.decode(gen.denoise(x0 + sigma * noise, torch.tensor([sigma]), ctx, None)).clamp(0, 1)[:, 0]
                    print(f"| {index} | {sigma:g} | {name} | {object_mean(view0, mask)} | {object_mean(gt[:, 0], mask)} |")

        items = collate_multiview([dataset[index] for index in range(args.objects)])
        gt, cams = items["images"].float(), items["cameras"]
        x0 = gen.encode(gt)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
        ctx = gen.prepare(gt[:, 0], cams, generator=torch.Generator().manual_seed(0))
        grey = ((gt.mean(2, keepdim=True) - gt) ** 2).mean(dim=(0, 2, 3, 4))
        print("\n| sigma | x0 MSE per view (view 0 = the condition) | MSE of the views without colour |")
        print("|---:|---|---|")
        for sigma in args.sigmas:
            sigmas = torch.full((gt.shape[0],), sigma)
            pred = gen.decode(gen.denoise(x0 + sigma * noise, sigmas, ctx, None)).clamp(0, 1)
            err = ((pred - gt) ** 2).mean(dim=(0, 2, 3, 4))
            print(f"| {sigma:g} | {[round(v, 4) for v in err.tolist()]} | {[round(v, 4) for v in grey.tolist()]} |")


if __name__ == "__main__":
    main()
