"""A picture of what a recipe does on held-out objects (the figure in docs/tiny-model/).

    python tools/sample_grid.py --recipe tiny --set trainer.data.kind=official \
        --set trainer.data.root=data/tiny/heldout --objects 6 -o docs/tiny-model/samples.png

For each object, three rows of its 8 views: the ground truth (view 0 is the input), the
generated views, and renders of the generated 3D Gaussians from the same cameras. Objects are
the first N of the recipe's ``trainer.data`` (start view 0), seeded as ``evaluate`` seeds them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--objects", type=int, default=6)
    parser.add_argument("--first", type=int, default=0, help="index of the first object")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()

    import torchvision.utils as vutils

    from ouroboros_core.data import collate_multiview
    from ouroboros_core.pipeline import ImageTo3DPipeline
    from ouroboros_core.recipe import load_recipe
    from ouroboros_core.runs import _dataset

    recipe = load_recipe(args.recipe, args.overrides)
    pipe = ImageTo3DPipeline.from_recipe(recipe)
    dataset = _dataset(recipe, random_start_view=False)
    rows = []
    with torch.no_grad():
        for index in range(args.first, args.first + args.objects):
            item = collate_multiview([dataset[index]])
            gt, cams = item["images"].to(pipe.device), item["cameras"].to(pipe.device)
            rng = torch.Generator(device=pipe.device).manual_seed(recipe.model.seed + index)
            out = pipe.sampler(gt[:, 0], cams, generator=rng)
            size = gt.shape[-1]
            renders = out.representation.render(cams, size, size, background=1.0).rgb
            rows += [gt[0], out.views[0].clamp(0, 1), renders[0].clamp(0, 1)]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    grid = torch.cat(rows).float().cpu()
    vutils.save_image(torch.nn.functional.interpolate(grid, scale_factor=2, mode="nearest"), args.output, nrow=8, padding=2, pad_value=0.6)


if __name__ == "__main__":
    main()
