"""Evaluation on held-out objects, and the feedback ablation (paper Table 2 at any scale).

Protocol (what ``ouroboros3d evaluate`` measures), per object of the recipe's ``trainer.data``
(read with the start view fixed at 0, so the 8 views are the official orbit):

- the object is generated from its view 0 with its own cameras, seed ``recipe.seed + index``
  (the same seed for every compared variant);
- **views**: the generated views against the ground-truth views; **3D**: renders of the final
  reconstruction from the same cameras against the ground truth; **views↔3D**: the renders
  against the generated views (how consistent the 3D is with the views it came from);
- PSNR per object from the MSE pooled over all views and pixels (the torchmetrics
  convention the paper's code uses), SSIM and LPIPS as the mean over views; then the mean
  over objects. Images are in [0, 1] on a white background, at the generator's resolution.

Trivial baselines are scored on the same objects beside every variant, so a number can be
read: ``white`` (every view is blank) and ``copy-input`` (the input view copied into every
view, and served as its own "3D"). One reference row bounds the 3D from above:
``oracle-views``, the reconstructor given the *true* input views (clean, as in its training
on clean views), so only its 3D columns are filled. When the 3D of a variant is far below the
oracle, the generator's views are what limits it; when the oracle itself is low, the
reconstructor is.

``compare`` variants run the same weights with different sampler settings:
``none`` (two-stage: generate, then reconstruct once), ``resample`` (x0 blended with its
re-encoded renders, no feedback maps), ``joint-rgb`` / ``joint-ccm`` (3D feedback with one map
kind, the other encoder seeing its step-0 zeros) and ``joint`` (every map kind).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from .cameras import Cameras
from .data import collate_multiview
from .errors import UserError
from .recipe import Recipe

log = logging.getLogger(__name__)

#: sampler settings of each ablation variant (applied on top of the recipe's sampler section)
VARIANTS: dict[str, dict[str, Any]] = {
    "none": {"mode": "none", "feedback_maps": None},
    "resample": {"mode": "resample", "feedback_maps": []},
    "joint-rgb": {"mode": "joint", "feedback_maps": ["rgb"]},
    "joint-ccm": {"mode": "joint", "feedback_maps": ["ccm"]},
    "joint": {"mode": "joint", "feedback_maps": None},
}
BASELINES = ("white", "copy-input")
#: the reconstructor on the ground-truth input views: the best 3D these weights can give
ORACLE = "oracle-views"
#: what each table column shows, in order: (result key, header, higher is better)
COLUMNS = (
    ("views.psnr", "views PSNR", True),
    ("views.ssim", "views SSIM", True),
    ("views.lpips", "views LPIPS", False),
    ("3d.psnr", "3D PSNR", True),
    ("3d.ssim", "3D SSIM", True),
    ("3d.lpips", "3D LPIPS", False),
    ("gap.psnr", "views - 3D PSNR", False),
    ("consistency.psnr", "views<->3D PSNR", True),
)


def pooled_psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of one object: ``-10 log10`` of the MSE over all its views and pixels."""
    mse = float(((pred.double() - target.double()) ** 2).mean())
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def parse_variants(spec: str | Sequence[str] | None) -> list[str]:
    """``"none,joint"`` or a list → checked variant names (``all``: every variant)."""
    if spec is None:
        return []
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    if names == ["all"]:
        return list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise UserError(f"--compare: unknown variant(s) {unknown}", hint=f"choose from {', '.join(VARIANTS)} or all")
    return names


def _scores(pred: torch.Tensor, gt: torch.Tensor, prefix: str, lpips_net: str | None, random_trunk: bool) -> dict[str, float]:
    from .metrics import lpips, ssim

    scores = {f"{prefix}.psnr": pooled_psnr(pred, gt), f"{prefix}.ssim": float(ssim(pred, gt).mean())}
    if lpips_net:
        scores[f"{prefix}.lpips"] = float(lpips(pred, gt, lpips_net, random_trunk).mean())
    return scores


def _object_scores(views: torch.Tensor, renders: torch.Tensor, gt: torch.Tensor, lpips_net: str | None, random_trunk: bool) -> dict[str, float]:
    scores = _scores(views, gt, "views", lpips_net, random_trunk)
    scores.update(_scores(renders, gt, "3d", lpips_net, random_trunk))
    scores["gap.psnr"] = scores["views.psnr"] - scores["3d.psnr"]
    scores["consistency.psnr"] = pooled_psnr(renders, views)
    return scores


@torch.no_grad()
def evaluate(
    recipe: Recipe,
    limit: int | None = None,
    output: str | Path | None = None,
    lpips_net: str | None = "alex",
    lpips_random_trunk: bool = False,
    compare: Sequence[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score the recipe (or each ``compare`` variant of it) and the baselines on ``trainer.data``.

    Returns ``{"recipe", "objects", "protocol", "lpips", "methods": {name: {"mean": ...,
    "per_object": [...]}}}``. With ``output`` (a ``.json`` path) the result is written there;
    with ``compare`` a markdown table (``.md``) and a bar chart (``.png``, when matplotlib is
    installed) are written beside it.
    """
    from .pipeline import ImageTo3DPipeline
    from .runs import _check_data, _dataset
    from .sampler import RecursiveSampler

    variants = list(compare or [])
    _check_data(recipe)
    pipe = ImageTo3DPipeline.from_recipe(recipe)
    samplers = {recipe.name or "recipe": pipe.sampler}
    if variants:
        base = recipe.model.sampler
        samplers = {
            name: RecursiveSampler(pipe.generator, pipe.reconstructor, pipe.encoders, base.model_copy(update=VARIANTS[name]), recipe.model.maps, pipe.sampler.autocast)
            for name in variants
        }
    dataset = _dataset(recipe, random_start_view=False)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    methods: dict[str, list[dict[str, Any]]] = {name: [] for name in [*BASELINES, ORACLE, *samplers]}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=count * len(samplers), desc="evaluate")
    try:
        for index in range(count):
            item = collate_multiview([dataset[index]])
            object_id = item["ids"][0]
            gt = item["images"].to(pipe.device).float()
            cams: Cameras = item["cameras"].to(pipe.device)
            white = torch.ones_like(gt)
            copy = gt[:, :1].expand_as(gt)
            for name, pred in (("white", white), ("copy-input", copy)):  # its own "3D": no gap to report
                scores = _object_scores(pred, pred, gt, lpips_net, lpips_random_trunk)
                methods[name].append({"id": object_id, **{k: v for k, v in scores.items() if k.split(".")[0] not in ("gap", "consistency")}})
            size = gt.shape[-1]
            idx = pipe.reconstructor.input_views
            oracle = pipe.reconstructor.reconstruct(
                (gt if idx is None else gt[:, idx]).to(pipe.dtype), cams.select_views(idx), None
            )
            oracle_renders = oracle.render(cams, size, size, background=1.0).rgb.float().clamp(0, 1)
            methods[ORACLE].append({"id": object_id, **_scores(oracle_renders, gt, "3d", lpips_net, lpips_random_trunk)})
            for name, sampler in samplers.items():
                rng = torch.Generator(device=pipe.device).manual_seed(recipe.model.seed + index)
                out = sampler(gt[:, 0].to(pipe.dtype), cams, generator=rng)
                views = out.views.float().clamp(0, 1)
                renders = out.representation.render(cams, size, size, background=1.0).rgb.float().clamp(0, 1)
                methods[name].append({"id": object_id, **_object_scores(views, renders, gt, lpips_net, lpips_random_trunk)})
                if bar is not None:
                    bar.update(1)
    finally:  # the bar ends its line, so an interruption's message stands on its own
        if bar is not None:
            bar.close()
    result = {
        "recipe": recipe.name,
        "data": recipe.model.trainer.data.model_dump(mode="json"),
        "objects": count,
        "steps": recipe.model.sampler.steps,
        "seed": recipe.model.seed,
        "protocol": "PSNR from the MSE pooled over all views per object; SSIM/LPIPS mean over views; then mean over objects",
        "lpips": None if not lpips_net else (f"{lpips_net} (RANDOM trunk: not a perceptual metric)" if lpips_random_trunk else lpips_net),
        "methods": {name: {"mean": _mean(rows), "per_object": rows} for name, rows in methods.items()},
    }
    if output is not None:
        write_report(result, Path(output), table=bool(variants))
    return result


def _mean(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k in (rows[0] if rows else {}) if k != "id"]
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys}


def markdown_table(result: dict[str, Any]) -> str:
    """The result as a markdown table: one row per method (baselines first), one column per metric."""
    columns = [(k, h) for k, h, _ in COLUMNS if any(k in m["mean"] for m in result["methods"].values())]
    lines = ["| method | " + " | ".join(h for _, h in columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, method in result["methods"].items():
        label = f"*{name}* (baseline)" if name in BASELINES else f"*{name}* (3D ceiling)" if name == ORACLE else name
        mean = method["mean"]
        cells = ["—" if k not in mean else f"{mean[k]:.3f}" if "ssim" in k or "lpips" in k else f"{mean[k]:.2f}" for k, _ in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(result: dict[str, Any], path: Path) -> Path:
    """Views and 3D PSNR per method as grouped bars, written as PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["methods"])
    means = [result["methods"][n]["mean"] for n in names]
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 3.6), dpi=120)
    views = [m.get("views.psnr", math.nan) for m in means]  # the oracle has no views of its own
    ax.bar([i - 0.2 for i in x], views, 0.4, label="views vs GT", color="#4c78a8")
    ax.bar([i + 0.2 for i in x], [m["3d.psnr"] for m in means], 0.4, label="3D renders vs GT", color="#f58518")
    tags = {**{n: "\n(baseline)" for n in BASELINES}, ORACLE: "\n(3D ceiling)"}
    ax.set_xticks(list(x), [n + tags.get(n, "") for n in names], fontsize=8)
    ax.set_ylabel("PSNR (dB)")
    low = min(v for m in means for v in (m.get("views.psnr", math.inf), m["3d.psnr"]))
    ax.set_ylim(max(0.0, low - 2.0), None)
    ax.set_title(f"{result['recipe']}: {result['objects']} held-out objects, {result['steps']} steps", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def write_report(result: dict[str, Any], output: Path, table: bool = True) -> list[Path]:
    """Write ``output`` (JSON) and, with ``table``, ``<stem>.md`` and ``<stem>.png`` beside it."""
    from .io.atomic import atomic_write

    output.parent.mkdir(parents=True, exist_ok=True)
    written = []
    with atomic_write(output) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    written.append(output)
    if table:
        md = output.with_suffix(".md")
        with atomic_write(md) as tmp:
            tmp.write_text(markdown_table(result))
        written.append(md)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            log.warning("no bar chart: matplotlib is not installed (pip install matplotlib)")
        else:
            chart = output.with_suffix(".png")
            with atomic_write(chart) as tmp:
                bar_chart(result, tmp)
            written.append(chart)
    return written
