"""Two training processes on the CPU through accelerate's own launcher (torch.distributed with
gloo), on the explicit small recipe; everything checked from the files the runs write
(multiprocess_driver.py's per-process probe and the run folder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from small_recipe import write_small_recipe

DRIVER = Path(__file__).with_name("multiprocess_driver.py")
BASE = ["trainer.data.num_objects=4", "trainer.loss.lpips_weight=0", "sampler.steps=2"]


def _run(tmp_path: Path, name: str, processes: int, max_steps: int, sets: list[str]) -> tuple[Path, Path]:
    recipe = write_small_recipe(tmp_path)
    run, probe = tmp_path / name, tmp_path / f"{name}-probe"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    script = [str(DRIVER), str(recipe), str(run), str(probe), str(max_steps), *BASE, *sets]
    if processes == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", *script,
        ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return run, probe


def _probe(probe: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (probe / f"rank{rank}.jsonl").read_text().splitlines()]


def _dataset_order(tmp_path: Path, seed_sets: list[str]) -> list[str]:
    """Object ids in the order the shuffled loader of epoch 0 yields them."""
    from ouroboros_core.data import EpochShuffleSampler
    from ouroboros_core.recipe import load_recipe
    from ouroboros_core.runs import _dataset

    recipe = load_recipe(write_small_recipe(tmp_path), [*BASE, *seed_sets])
    dataset = _dataset(recipe)
    order = list(EpochShuffleSampler(len(dataset), recipe.model.seed))
    return [dataset[i]["id"] for i in order]


def test_two_processes_stay_identical_shard_the_data_and_only_rank_0_writes(tmp_path):
    run, probe = _run(tmp_path, "ddp", 2, 3, ["trainer.batch_size=1", "trainer.checkpoint_every=1", "trainer.self_condition_prob=0.5"])
    ranks = [_probe(probe, 0), _probe(probe, 1)]
    assert [[line["step"] for line in r] for r in ranks] == [[1, 2, 3], [1, 2, 3]]
    assert all(line["processes"] == 2 for r in ranks for line in r)
    # bit-identical trainable weights on both processes after every optimiser step, and training moved them
    assert [line["digest"] for line in ranks[0]] == [line["digest"] for line in ranks[1]]
    assert len({line["digest"] for line in ranks[0]}) == 3
    # the self-conditioning coin agrees (both processes run the same graph)
    assert [line["losses"]["feedback"] for line in ranks[0]] == [line["losses"]["feedback"] for line in ranks[1]]
    # data sharded: epoch 0 (4 objects, 2 steps of 2 x 1) shows every object once, rank 0 the even positions
    order = _dataset_order(tmp_path, [])
    seen = [[line["ids"] for line in r] for r in ranks]
    assert seen[0][:2] == [[order[0]], [order[2]]] and seen[1][:2] == [[order[1]], [order[3]]]
    assert sorted(i for r in seen for ids in r[:2] for i in ids) == sorted(order)
    # only rank 0 wrote anything in the run folder; it wrote the log once per step
    assert not (probe / "writes1.txt").exists()
    written = (probe / "writes0.txt").read_text().splitlines()
    assert any(w.endswith("log.jsonl") for w in written) and any("weights" in w for w in written)
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001", "step-00000002", "step-00000003"]
    # the logged loss is the mean over the processes (both report the same mean)
    for line, a, b in zip(lines, *ranks):
        assert line["total"] == pytest.approx(a["losses"]["total"], rel=1e-6) == pytest.approx(b["losses"]["total"], rel=1e-6)


def test_two_processes_at_batch_1_equal_one_process_at_batch_2(tmp_path):
    """The reconstructor objective draws no noise, so the two layouts see exactly the same
    computation: losses (step 2 depends on step 1's synchronised update) and the exported
    weights agree within float tolerance, after updates far larger than that tolerance."""
    sets = ["trainer.objective=reconstructor", "trainer.trainable=[reconstructor]", "trainer.lr=1e-3", "trainer.checkpoint_every=0"]
    run2, probe2 = _run(tmp_path, "two", 2, 2, [*sets, "trainer.batch_size=1"])
    run1, probe1 = _run(tmp_path, "one", 1, 2, [*sets, "trainer.batch_size=2"])
    one, (r0, r1) = _probe(probe1, 0), (_probe(probe2, 0), _probe(probe2, 1))
    for step in range(2):  # the same samples: the 1-process batch is the union of the two shards
        assert one[step]["ids"] == r0[step]["ids"] + r1[step]["ids"]
    log1 = [json.loads(line) for line in (run1 / "log.jsonl").read_text().splitlines()]
    log2 = [json.loads(line) for line in (run2 / "log.jsonl").read_text().splitlines()]
    for key in ("total", "recon"):
        assert [line[key] for line in log2] == pytest.approx([line[key] for line in log1], rel=1e-5), key
    w1 = load_file(str(run1 / "weights" / "reconstructor.safetensors"))
    w2 = load_file(str(run2 / "weights" / "reconstructor.safetensors"))
    from ouroboros_core.build import build_components
    from ouroboros_core.recipe import load_recipe

    start = build_components(load_recipe(write_small_recipe(tmp_path), BASE), device=torch.device("cpu")).reconstructor.state_dict()
    update1 = torch.cat([(w1[k] - start[k]).flatten() for k in w1])
    update2 = torch.cat([(w2[k] - start[k]).flatten() for k in w1])
    assert update1.abs().mean() > 1e-4  # two AdamW steps at lr 1e-3 moved the weights
    # AdamW's first steps divide by |g|, so elements whose gradient is ~0 amplify float noise:
    # compare the updates as a whole, and count the elements that disagree by over 1 % of lr
    assert float((update2 - update1).abs().mean() / update1.abs().mean()) < 1e-3
    assert float(((update2 - update1).abs() > 1e-5).float().mean()) < 1e-2
    assert one[0]["losses"]["grad_norm"] == pytest.approx(r0[0]["losses"]["grad_norm"], rel=1e-6)  # synchronised gradients
