"""kill -9 in the middle of writing a checkpoint: the previous checkpoint stays complete and
loadable, `--resume latest` continues from it, and the resumed run ends bit-identical to an
uninterrupted one (single process, explicit small recipe, EMA on, checkpoint mid-epoch); with two
processes (accelerate's launcher, gloo) every process is killed and the resumed run repeats the
interrupted step bit for bit on both."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from small_recipe import write_small_recipe

DRIVER = Path(__file__).with_name("multiprocess_driver.py")
SETS = [
    "trainer.data.num_objects=3", "trainer.batch_size=1", "trainer.checkpoint_every=1", "trainer.ema_decay=0.9",
    "trainer.loss.lpips_weight=0", "trainer.self_condition_prob=0.5", "trainer.lr=1e-3", "sampler.steps=2",
]


def _driver(recipe: Path, run: Path, probe: Path, steps: int, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(DRIVER), str(recipe), str(run), str(probe), str(steps), *SETS],
        env=dict(os.environ, OMP_NUM_THREADS="1", **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _launch(recipe: Path, run: Path, probe: Path, steps: int, **env: str) -> subprocess.Popen:
    """The driver under ``accelerate launch`` with two CPU processes."""
    launcher = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
    ]
    return subprocess.Popen(
        [*launcher, str(DRIVER), str(recipe), str(run), str(probe), str(steps), *SETS],
        env=dict(os.environ, OMP_NUM_THREADS="1", **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for(files: list[Path], process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 240
    while not all(f.exists() for f in files):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie nobody reaps counts as exited)."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def _finish(process: subprocess.Popen) -> None:
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err[-3000:]


def test_kill_9_while_checkpointing_then_resume_is_bit_identical(tmp_path):
    recipe = write_small_recipe(tmp_path)
    straight = _driver(recipe, tmp_path / "straight", tmp_path / "straight-probe", 4)
    _finish(straight)

    killed_run, probe = tmp_path / "killed", tmp_path / "killed-probe"
    process = _driver(recipe, killed_run, probe, 4, HANG_IN_CHECKPOINT="00000003")
    _wait_for([probe / "hanging0"], process)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL

    checkpoints = killed_run / "checkpoints"
    # the half-written step 3 is a hidden temporary folder (model file only); step 2 is complete
    partial = [p for p in checkpoints.iterdir() if p.name.startswith(".step-00000003.tmp-")]
    assert len(partial) == 1 and sorted(p.name for p in partial[0].iterdir()) == ["model.safetensors"]
    assert sorted(p.name for p in checkpoints.iterdir() if not p.name.startswith(".")) == ["step-00000001", "step-00000002"]
    assert sorted(p.name for p in (checkpoints / "step-00000002").iterdir()) == [
        "ema.safetensors", "model.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer.json"
    ]
    assert not (killed_run / "weights").exists()

    # `--resume latest` picks step 2 (the temporary folder is not a checkpoint) and finishes
    # (in a process with the straight run's thread count: bit identity needs the same reduction order)
    sets = [a for s in SETS for a in ("--set", s)]
    resumed = subprocess.run(
        [sys.executable, "-m", "ouroboros_core.cli", "train", "--recipe", str(recipe), "-o", str(killed_run), "--max-steps", "4",
         "--resume", "latest", "-q", *sets],
        env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=240,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = [json.loads(line) for line in (killed_run / "log.jsonl").read_text().splitlines()]
    straight_log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log] == [1, 2, 3, 3, 4]  # step 3's first attempt was logged before the kill
    drop = {"time"}
    assert [{k: v for k, v in line.items() if k not in drop} for line in log[3:]] == [
        {k: v for k, v in line.items() if k not in drop} for line in straight_log[2:]
    ]
    for part in ("generator", "reconstructor", "feedback-0", "feedback-1"):  # exported EMA weights, bit for bit
        a = load_file(str(tmp_path / "straight" / "weights" / f"{part}.safetensors"))
        b = load_file(str(killed_run / "weights" / f"{part}.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (part, key)
    for name in ("model", "optimizer", "ema"):  # and the whole trainer state of the last checkpoint
        a = load_file(str(tmp_path / "straight" / "checkpoints" / "step-00000004" / f"{name}.safetensors"))
        b = load_file(str(checkpoints / "step-00000004" / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_kill_9_of_both_processes_while_checkpointing_then_resume_repeats_the_step(tmp_path):
    """Both ranks (and the launcher) are killed while rank 0 writes checkpoint 3 and rank 1 waits
    for it; the run resumed with two processes from step 2 recomputes step 3 to the very weights
    the killed run had reached, on both ranks: weights, optimizer state and each process's own
    noise generator were restored (no uninterrupted run needed, which keeps the test short)."""
    recipe = write_small_recipe(tmp_path)
    run, probe = tmp_path / "run", tmp_path / "probe"
    process = _launch(recipe, run, probe, 4, HANG_IN_CHECKPOINT="00000003")
    _wait_for([probe / "hanging0", probe / "pid1"], process)
    pids = [process.pid] + [int((probe / f"pid{rank}").read_text()) for rank in (0, 1)]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    process.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while not all(_gone(pid) for pid in pids[1:]):
        assert time.monotonic() < deadline, "a rank survived kill -9"
        time.sleep(0.1)

    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if not p.name.startswith(".")) == ["step-00000001", "step-00000002"]
    assert [p.name for p in checkpoints.iterdir() if p.name.startswith(".")][0].startswith(".step-00000003.tmp-")
    previous = checkpoints / "step-00000002"
    assert sorted(p.name for p in previous.iterdir()) == [
        "ema.safetensors", "model.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer.json"
    ]
    assert json.loads((previous / "trainer.json").read_text())["step"] == 2
    assert not (run / "weights").exists()
    before = [[json.loads(line) for line in (probe / f"rank{rank}.jsonl").read_text().splitlines()] for rank in (0, 1)]
    assert [line["step"] for line in before[0]] == [line["step"] for line in before[1]] == [1, 2, 3]

    resumed_probe = tmp_path / "resumed-probe"
    _finish(_launch(recipe, run, resumed_probe, 4, RESUME="latest"))
    after = [[json.loads(line) for line in (resumed_probe / f"rank{rank}.jsonl").read_text().splitlines()] for rank in (0, 1)]
    assert [line["step"] for line in after[0]] == [line["step"] for line in after[1]] == [3, 4]
    for rank in (0, 1):  # step 3 again: the same samples, losses and resulting weights on each rank
        assert after[rank][0] == before[rank][2], rank
    assert after[0][1]["digest"] == after[1][1]["digest"] != after[0][0]["digest"]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log] == [1, 2, 3, 3, 4]
    assert sorted(p.name for p in checkpoints.iterdir() if not p.name.startswith(".")) == [f"step-0000000{i}" for i in range(1, 5)]
    assert sorted(p.name for p in (run / "weights").iterdir()) == [
        "feedback-0.safetensors", "feedback-1.safetensors", "generator.safetensors", "reconstructor.safetensors"
    ]
