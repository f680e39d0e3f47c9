"""Ctrl-C in train and evaluate: one line ``interrupted``, exit 130, nothing complete-looking
left behind, and a training run keeps its last complete checkpoint."""

from __future__ import annotations

import json

import pytest

from ouroboros_core.cli import main

SMALL = ["trainer.batch_size=1", "trainer.data.num_objects=2", "trainer.checkpoint_every=1", "sampler.steps=2"]
SETS = [a for s in SMALL for a in ("--set", s)]


def _interrupted(capsys) -> None:
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "interrupted"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_ctrl_c_while_training_keeps_the_last_complete_checkpoint(tmp_path, capsys, monkeypatch):
    import safetensors.torch

    real_save = safetensors.torch.save_file

    def save_file(tensors, filename, *args, **kwargs):  # Ctrl-C halfway through checkpoint 3
        if ".step-00000003.tmp-" in str(filename) and "optimizer" in str(filename):
            raise KeyboardInterrupt
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    run = tmp_path / "run"
    assert main(["train", "--recipe", "tiny", "-o", str(run), "--max-steps", "4", "-q"] + SETS) == 130
    _interrupted(capsys)
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000001", "step-00000002"]  # no partial step 3
    meta = json.loads((checkpoints / "step-00000002" / "trainer.json").read_text())
    assert meta["step"] == 2
    assert not (run / "trained.yaml").exists() and not (run / "weights").exists()

    # the run continues from its last complete checkpoint
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    assert main(["train", "--recipe", "tiny", "-o", str(run), "--max-steps", "3", "--resume", "latest", "-q"] + SETS) == 0
    assert (run / "trained.yaml").is_file()
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps[-1] == 3


def test_ctrl_c_while_evaluating_writes_no_metrics(tmp_path, capsys, monkeypatch):
    from ouroboros_core.sampler import RecursiveSampler

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(RecursiveSampler, "__call__", interrupt)
    target = tmp_path / "metrics.json"
    assert main(["evaluate", "--recipe", "tiny", "--limit", "1", "--lpips", "none", "-o", str(target)] + SETS) == 130
    _interrupted(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("debug", [False, True])
def test_ctrl_c_traceback_only_with_debug(capsys, monkeypatch, debug):
    import ouroboros_core.recipe

    def interrupt():
        raise KeyboardInterrupt

    monkeypatch.setattr(ouroboros_core.recipe, "list_recipes", interrupt)
    assert main((["--debug"] if debug else []) + ["recipes", "list"]) == 130
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "interrupted"
    assert ("Traceback" in err) == debug
