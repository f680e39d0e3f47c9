"""``evaluate``'s numbers recomputed independently: ground truth read back from the dataset files
with PIL, the generated views and 3D of each object captured from the sampler, and PSNR/SSIM
computed by plain numpy formulas written here (not ``ouroboros_core.metrics``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from ouroboros_core.data.synth import synthesize
from ouroboros_core.evaluation import evaluate
from ouroboros_core.recipe import load_recipe
from ouroboros_core.sampler import RecursiveSampler
from tests.e2e.small_recipe import write_small_recipe

#: the official 8-of-16 sub-sampling of the orbit, linspace(0, 15, 8) rounded down
VIEWS = [0, 2, 4, 6, 8, 10, 12, 15]


def numpy_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """One value for all views of an object: -10 log10 of the MSE pooled over views and pixels."""
    return -10 * math.log10(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def numpy_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM over views of ``(V, 3, H, W)`` images: 11x11 Gaussian window (sigma 1.5)
    evaluated where it fits, population statistics, C1 = 0.01², C2 = 0.03²; mean over pixels
    and channels, then over views."""
    x = np.arange(11) - 5
    g = np.exp(-(x**2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()

    def local_mean(t):
        return np.einsum("...ij,ij->...", sliding_window_view(t, (11, 11), axis=(-2, -1)), window)

    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a**2
    var_b = local_mean(b * b) - mu_b**2
    cov = local_mean(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.reshape(s.shape[0], -1).mean(1).mean())


def read_ground_truth(folder) -> np.ndarray:
    """The object's 8 views ``(8, 3, H, W)``: straight-alpha PNGs composited on white."""
    meta = json.loads((folder / "meta.json").read_text())
    views = []
    for i in VIEWS:
        rgba = np.asarray(Image.open(folder / meta["locations"][i]["frames"][0]["name"]).convert("RGBA"), dtype=np.float64) / 255
        views.append((rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])).transpose(2, 0, 1))
    return np.stack(views)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    root = synthesize(tmp / "data", 2, seed=11, split="heldout", size=32, progress=False)
    recipe = load_recipe(write_small_recipe(tmp), ["sampler.steps=2", "trainer.data.kind=official", f"trainer.data.root={root}"])
    captured = []
    real = RecursiveSampler.__call__

    def spy(self, image, cameras, generator=None, callbacks=()):
        out = real(self, image, cameras, generator=generator, callbacks=callbacks)
        renders = out.representation.render(cameras, 32, 32, background=1.0).rgb.float().clamp(0, 1)
        captured.append({"input": image[0].double().numpy(), "views": out.views[0].double().numpy(), "renders": renders[0].double().numpy()})
        return out

    mp = pytest.MonkeyPatch()
    mp.setattr(RecursiveSampler, "__call__", spy)
    try:
        result = evaluate(recipe, limit=2, output=tmp / "metrics.json", lpips_net=None)
    finally:
        mp.undo()
    return result, captured, root, tmp / "metrics.json"


def test_evaluate_scores_equal_numpy_recomputation(evaluated):
    result, captured, root, _ = evaluated
    assert result["objects"] == 2 and len(captured) == 2
    ids = sorted(p.name for p in root.iterdir() if (p / "meta.json").is_file())
    method = result["methods"]["small"]
    assert [row["id"] for row in method["per_object"]] == ids
    for row, got, object_id in zip(method["per_object"], captured, ids):
        gt = read_ground_truth(root / object_id)
        # the object is generated from its own view 0
        np.testing.assert_allclose(got["input"], gt[0], atol=1e-6)
        views, renders = got["views"], got["renders"]
        expected = {
            "views.psnr": numpy_psnr(views, gt),
            "views.ssim": numpy_ssim(views, gt),
            "3d.psnr": numpy_psnr(renders, gt),
            "3d.ssim": numpy_ssim(renders, gt),
            "consistency.psnr": numpy_psnr(renders, views),
        }
        expected["gap.psnr"] = expected["views.psnr"] - expected["3d.psnr"]
        assert set(row) == {"id", *expected}
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, abs=1e-4), f"{object_id} {key}: evaluate says {row[key]}, numpy says {value}"
    for key in method["mean"]:
        assert method["mean"][key] == pytest.approx(np.mean([r[key] for r in method["per_object"]]), abs=1e-9)


def test_baselines_equal_numpy_recomputation(evaluated):
    result, _, root, _ = evaluated
    for index, object_id in enumerate(sorted(p.name for p in root.iterdir() if (p / "meta.json").is_file())):
        gt = read_ground_truth(root / object_id)
        for name, pred in (("white", np.ones_like(gt)), ("copy-input", np.broadcast_to(gt[:1], gt.shape))):
            row = result["methods"][name]["per_object"][index]
            assert row["id"] == object_id
            for prefix in ("views", "3d"):  # a baseline is its own "3D"
                assert row[f"{prefix}.psnr"] == pytest.approx(numpy_psnr(pred, gt), abs=1e-4), name
                assert row[f"{prefix}.ssim"] == pytest.approx(numpy_ssim(pred, gt), abs=1e-4), name


def test_metrics_file_holds_the_returned_result(evaluated):
    result, _, _, path = evaluated
    assert json.loads(path.read_text()) == json.loads(json.dumps(result))
