"""Watching a training run (TensorBoard scalars and validation images, read back with
tensorboard's own event reader) and `train --dry-run`, on the explicit small recipe."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from ouroboros_core.cli import main

from small_recipe import write_small_recipe

def _sets(*extra: str) -> list[str]:
    return [a for s in ["trainer.batch_size=1", "trainer.checkpoint_every=0", "sampler.steps=2", "trainer.loss.lpips_weight=0", *extra] for a in ("--set", s)]


def test_tensorboard_scalars_and_validation_strip(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from PIL import Image

    recipe = write_small_recipe(tmp_path)
    out = tmp_path / "run"
    args = ["train", "--recipe", str(recipe), "-o", str(out), "--max-steps", "3", "-q"]
    assert main(args + _sets("trainer.tensorboard=true", "trainer.validate_every=2", "trainer.self_condition_prob=1.0")) == 0
    printed = capsys.readouterr().out
    assert f"tensorboard --logdir {out / 'tensorboard'}" in printed and str(out / "log.jsonl") in printed

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    expected = {
        "loss/total": "total", "loss/diffusion": "diffusion_pass1", "loss/self_conditioning": "diffusion",
        "loss/reconstruction": "recon", "train/lr": "lr", "train/grad_norm": "grad_norm",
    }
    assert set(expected) | {"train/steps_per_s"} <= set(tags["scalars"])
    for tag, key in expected.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3], tag
        assert [e.value for e in events] == pytest.approx([line[key] for line in lines], rel=1e-6), tag
    assert all(e.value > 0 for e in acc.Scalars("train/steps_per_s"))

    # one validation strip, at step 2: input + 8 generated views over a blank + 8 renders, 32² each
    assert tags["images"] == ["validation"]
    (event,) = acc.Images("validation")
    assert event.step == 2 and (event.height, event.width) == (64, 9 * 32)
    strip = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")).astype(np.float32) / 255
    from ouroboros_core.recipe import load_recipe
    from ouroboros_core.runs import _dataset

    heldout = _dataset(load_recipe(recipe), split="heldout", num_objects=1, random_start_view=False)[0]
    first = heldout["images"][0].permute(1, 2, 0).numpy()
    assert np.abs(strip[:32, :32] - first).max() <= 1 / 255 + 1e-6  # the input view of the held-out object
    assert np.all(strip[32:, :32] == 1.0)  # blank under the input
    assert strip[:32, 32:].std() > 0.01 and strip[32:, 32:].std() > 0.01  # generated views and renders drawn


def test_without_tensorboard_nothing_is_written_there(tmp_path, capsys):
    recipe = write_small_recipe(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--recipe", str(recipe), "-o", str(out), "--max-steps", "1", "-q"] + _sets()) == 0
    assert "--set trainer.tensorboard=true" in capsys.readouterr().out
    assert not (out / "tensorboard").exists()
    assert set(json.loads((out / "log.jsonl").read_text())) >= {"step", "lr", "time", "total", "diffusion", "recon"}  # the log as before


def test_dry_run_prints_counts_memory_and_time_and_writes_nothing(tmp_path, capsys):
    from ouroboros_core.build import build_components
    from ouroboros_core.recipe import load_recipe

    recipe = write_small_recipe(tmp_path)
    out = tmp_path / "run"
    sets = _sets("trainer.trainable=[generator.unet,feedback]")
    assert main(["train", "--recipe", str(recipe), "-o", str(out), "--dry-run"] + sets) == 0
    printed = capsys.readouterr().out
    assert not out.exists()
    parts = build_components(load_recipe(recipe), device=torch.device("cpu"), dtype=torch.float32)
    unet = sum(p.numel() for p in parts.generator.unet.parameters())
    feedback = sum(p.numel() for e in parts.encoders for p in e.parameters())
    gen_total = sum(p.numel() for p in parts.generator.parameters())
    assert f"generator.unet {unet:,}, feedback {feedback:,}" in printed
    assert f"generator {unet:,}/{gen_total:,}" in printed
    assert "s/step" in printed and "peak RSS" in printed


def test_ema_and_raw_weights_are_exported_side_by_side(tmp_path):
    from safetensors.torch import load_file

    from ouroboros_core.pipeline import ImageTo3DPipeline

    recipe = write_small_recipe(tmp_path)
    out = tmp_path / "run"
    sets = _sets("trainer.ema_decay=0.5", "trainer.export_raw_weights=true", "trainer.lr=1e-3", "trainer.checkpoint_every=2")
    assert main(["train", "--recipe", str(recipe), "-o", str(out), "--max-steps", "2", "-q"] + sets) == 0
    checkpoint = out / "checkpoints" / "step-00000002"
    ema, raw = load_file(str(checkpoint / "ema.safetensors")), load_file(str(checkpoint / "model.safetensors"))
    for part, prefix in (("reconstructor", "reconstructor."), ("feedback-0", "feedback.0.")):
        averaged = load_file(str(out / "weights" / f"{part}.safetensors"))
        last = load_file(str(out / "weights-raw" / f"{part}.safetensors"))
        keys = [k for k in ema if k.startswith(prefix)]
        assert keys
        for key in keys:
            name = key[len(prefix):]
            assert torch.equal(averaged[name], ema[key]) and torch.equal(last[name], raw[key]), key
        assert any(not torch.equal(averaged[k[len(prefix):]], last[k[len(prefix):]]) for k in keys)
    pipe = ImageTo3DPipeline.from_recipe(out / "trained-raw.yaml")
    for name, value in pipe.reconstructor.state_dict().items():
        assert torch.equal(value, load_file(str(out / "weights-raw" / "reconstructor.safetensors"))[name]), name
