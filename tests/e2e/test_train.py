"""Training and evaluation runs of the tiny recipe: run folder, resume, export, reuse."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from ouroboros_core.cli import main
from ouroboros_core.errors import RecipeError
from ouroboros_core.pipeline import ImageTo3DPipeline
from ouroboros_core.recipe import load_recipe
from ouroboros_core.evaluation import BASELINES, ORACLE, evaluate, pooled_psnr
from ouroboros_core.data import collate_multiview
from ouroboros_core.runs import _dataset
from ouroboros_core.runs import train

SMALL = ["trainer.batch_size=1", "trainer.data.num_objects=2", "trainer.checkpoint_every=1", "sampler.steps=2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--recipe", "tiny", "-o", str(out), "--max-steps", "2", "-q"] + [a for s in SMALL for a in ("--set", s)]) == 0
    return out


def test_run_folder_has_log_checkpoints_and_weights(run_dir):
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    assert all(torch.isfinite(torch.tensor(line["total"])) for line in lines)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    assert sorted(p.name for p in (run_dir / "weights").iterdir()) == [
        "feedback-0.safetensors", "feedback-1.safetensors", "generator.safetensors", "reconstructor.safetensors"
    ]


def test_trained_recipe_loads_the_exported_weights(run_dir):
    pipe = ImageTo3DPipeline.from_recipe(run_dir / "trained.yaml")
    assert not any(c.random_init for c in pipe.components)
    saved = load_file(str(run_dir / "weights" / "reconstructor.safetensors"))
    for key, value in pipe.reconstructor.state_dict().items():
        assert torch.equal(value, saved[key]), key
    # training changed the weights: the exported UNet differs from the seeded initialisation
    fresh = ImageTo3DPipeline.from_recipe("tiny")
    key = "unet.conv_in.weight"
    assert not torch.equal(fresh.generator.state_dict()[key], pipe.generator.state_dict()[key])


def test_resume_continues_from_the_latest_checkpoint(run_dir):
    recipe = load_recipe("tiny", SMALL)
    train(recipe, run_dir, resume="latest", max_steps=3, progress=False)
    steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert (run_dir / "checkpoints" / "step-00000003").is_dir()


def test_training_honours_attention_backend_and_bf16_on_the_cpu(tmp_path):
    """The speed settings of the tiny recipes: the recipe's attention_backend holds while the
    trainer steps (and is lifted after), and bf16 autocast trains the real model, Gaussian
    rendering included, to finite losses."""
    seen = []

    def probe(info):
        seen.append((torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled(), info.losses["total"]))

    recipe = load_recipe("tiny", SMALL + ["attention_backend=math", "trainer.mixed_precision=bf16"])
    train(recipe, tmp_path, max_steps=1, progress=False, callbacks=[probe])
    assert [s[:2] for s in seen] == [(False, True)]
    assert math.isfinite(seen[0][2])
    assert torch.backends.cuda.flash_sdp_enabled()


def test_training_views_must_match_the_generator():
    recipe = load_recipe("tiny", SMALL + ["trainer.data.num_views=4"])
    with pytest.raises(RecipeError, match=r"trainer\.data\.num_views is 4, but generator 'svd' uses 8"):
        train(recipe, max_steps=1, progress=False)


def test_evaluate_scores_views_and_renders(tmp_path):
    pytest.importorskip("lpips")
    pytest.importorskip("torchvision")
    recipe = load_recipe("tiny", SMALL)
    result = evaluate(recipe, limit=1, output=tmp_path / "metrics.json", lpips_net="alex", lpips_random_trunk=True)
    assert result["objects"] == 1
    assert set(result["methods"]) == {recipe.name, ORACLE, *BASELINES}
    metrics = {f"{a}.{m}" for a in ("views", "3d") for m in ("psnr", "ssim", "lpips")}
    assert set(result["methods"][recipe.name]["mean"]) == metrics | {"gap.psnr", "consistency.psnr"}
    for name in BASELINES:  # a baseline is its own "3D": no gap or consistency to report
        assert set(result["methods"][name]["mean"]) == metrics
    assert set(result["methods"][ORACLE]["mean"]) == {f"3d.{m}" for m in ("psnr", "ssim", "lpips")}
    mean = result["methods"][recipe.name]["mean"]
    assert 0 < mean["3d.psnr"] < 60 and 0 <= mean["views.lpips"]
    assert "RANDOM trunk" in result["lpips"]
    assert json.loads((tmp_path / "metrics.json").read_text())["methods"] == result["methods"]


def test_evaluate_command_prints_means(run_dir, tmp_path, capsys):
    args = ["evaluate", "--recipe", str(run_dir / "trained.yaml"), "--limit", "1", "--lpips", "none", "-o", str(tmp_path / "m.json")]
    assert main(args + ["--set", "sampler.steps=2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["objects"] == 1 and printed["lpips"] is None
    saved = json.loads((tmp_path / "m.json").read_text())
    assert printed["mean"] == {name: method["mean"] for name, method in saved["methods"].items()}
    assert set(printed["mean"]) - set(BASELINES)  # the trained recipe beside the baselines
    for name, mean in printed["mean"].items():
        shown = {"3d.psnr", "3d.ssim"} if name == ORACLE else {"views.psnr", "views.ssim", "3d.psnr", "3d.ssim"}
        assert shown <= set(mean) and not any("lpips" in k for k in mean), name


def test_oracle_row_is_the_reconstruction_of_the_true_input_views():
    """The ``oracle-views`` 3D PSNR is what the reconstructor makes of the ground-truth input
    views, recomputed here by hand from the same dataset item."""
    recipe = load_recipe("tiny", SMALL)
    result = evaluate(recipe, limit=1, lpips_net=None)
    pipe = ImageTo3DPipeline.from_recipe(recipe)
    item = collate_multiview([_dataset(recipe, random_start_view=False)[0]])
    gt, cams = item["images"].float(), item["cameras"]
    idx = pipe.reconstructor.input_views
    with torch.no_grad():
        rep = pipe.reconstructor.reconstruct(gt[:, idx], cams.select_views(idx), None)
        renders = rep.render(cams, gt.shape[-1], gt.shape[-1], background=1.0).rgb.float().clamp(0, 1)
    assert result["methods"][ORACLE]["mean"]["3d.psnr"] == pytest.approx(pooled_psnr(renders, gt), abs=1e-4)


def test_max_steps_flag_is_the_end_of_the_lr_schedule(tmp_path):
    """``--max-steps N`` ends the loop, the learning-rate schedule and the saved recipe at the
    same step: a linear schedule over a recipe's 100 steps stopped at 3 would otherwise never
    decay (resumed runs that extend a stage rely on this)."""
    overrides = [*SMALL, "trainer.lr_schedule=linear", "trainer.lr_min_ratio=0", "trainer.max_steps=100", "trainer.lr=0.001"]
    args = ["train", "--recipe", "tiny", "-o", str(tmp_path), "--max-steps", "3", "-q"]
    assert main(args + [a for s in overrides for a in ("--set", s)]) == 0
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.001, 0.001 * 2 / 3, 0.001 / 3])
    assert load_recipe(tmp_path / "recipe.yaml").model.trainer.max_steps == 3
