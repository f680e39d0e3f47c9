"""Training under the shipped FSDP config (configs/accelerate/fsdp.yaml: FSDP2, its wrap list) with
two CPU processes through accelerate's launcher (gloo), on the explicit small recipe: the weights
really are sharded, a checkpoint resumes to bit-identical weights, the exported weights are the
full gathered ones and load into a one-process pipeline, and FSDP trains as DDP does.

accelerate never builds FSDP on the CPU by itself (see fsdp_driver.py, which turns it on); the
CPU variant of the config is written here with only use_cpu, mixed_precision and num_processes
changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from small_recipe import write_small_recipe

HERE = Path(__file__).parent
SHIPPED = HERE.parents[1] / "configs" / "accelerate" / "fsdp.yaml"
SETS = [
    "trainer.data.num_objects=4", "trainer.loss.lpips_weight=0", "sampler.steps=2", "trainer.batch_size=1",
    "trainer.checkpoint_every=1", "trainer.ema_decay=0.9", "trainer.export_raw_weights=true", "trainer.lr=1e-3",
    "trainer.self_condition_prob=0.5",
]
FILES = ("model", "optimizer", "ema", "rng")
PARTS = ("generator", "reconstructor", "feedback-0", "feedback-1")


def _cpu_config(folder: Path) -> Path:
    config = yaml.safe_load(SHIPPED.read_text())
    config.update(use_cpu=True, mixed_precision="no", num_processes=2)
    path = folder / "fsdp-cpu.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _launch(folder: Path, name: str, launcher: list[str], driver: str, steps: int, **env: str) -> tuple[Path, Path]:
    run, probe = folder / name, folder / f"{name}-probe"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *launcher, "--main_process_port", "0",
        str(HERE / driver), str(write_small_recipe(folder)), str(run), str(probe), str(steps), *SETS,
    ]
    done = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1", **env), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return run, probe


def _fsdp(folder: Path, name: str, steps: int, **env: str) -> tuple[Path, Path]:
    return _launch(folder, name, ["--config_file", str(_cpu_config(folder))], "fsdp_driver.py", steps, **env)


def _log(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in (run / "log.jsonl").read_text().splitlines()]


def _same_files(a: Path, b: Path) -> None:
    a_tensors, b_tensors = load_file(str(a)), load_file(str(b))
    assert a_tensors.keys() == b_tensors.keys(), a
    for key in a_tensors:
        assert torch.equal(a_tensors[key], b_tensors[key]), (a, key)


def _initial_state(folder: Path) -> dict[str, torch.Tensor]:
    """The components' weights before training, keyed by path inside the components."""
    from ouroboros_core.build import build_components
    from ouroboros_core.recipe import load_recipe

    parts = build_components(load_recipe(write_small_recipe(folder), SETS), device=torch.device("cpu"))
    modules = {"generator": parts.generator, "reconstructor": parts.reconstructor, "feedback": torch.nn.ModuleList(parts.encoders)}
    return torch.nn.ModuleDict(modules).state_dict()


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Two FSDP steps with a checkpoint after each, EMA and both exports: (folder, run, probe)."""
    folder = tmp_path_factory.mktemp("fsdp")
    run, probe = _fsdp(folder, "straight", 2)
    return folder, run, probe


def test_fsdp_shards_resumes_bit_identically_and_exports_the_full_weights(fsdp_run):
    folder, run, probe = fsdp_run
    # FSDP2 really ran: each process held about half of every trainable tensor's elements
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["sharded"] for r in ranks) and ranks[0]["full"] == ranks[1]["full"]
    assert ranks[0]["local"] + ranks[1]["local"] == ranks[0]["full"]
    assert all(0.4 < r["local"] / r["full"] < 0.6 for r in ranks)
    # only rank 0 wrote in the run folder (the others took part in every gather)
    assert not (probe / "writes1.txt").exists() and (probe / "writes0.txt").exists()
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000001", "step-00000002"]

    # resumed from step 1 by two FSDP processes: step 2 again, bit for bit, from the shards
    # scattered out of the full checkpoint (weights, optimizer moments, EMA, every process's noise)
    resumed, resumed_probe = _fsdp(folder, "resumed", 2, RESUME=str(checkpoints / "step-00000001"))
    assert not (resumed_probe / "writes1.txt").exists()
    assert _log(resumed) == _log(run)[1:]
    for name in FILES:
        _same_files(checkpoints / "step-00000002" / f"{name}.safetensors", resumed / "checkpoints" / "step-00000002" / f"{name}.safetensors")
    trained = json.loads((checkpoints / "step-00000002" / "trainer.json").read_text())
    assert json.loads((resumed / "checkpoints" / "step-00000002" / "trainer.json").read_text()) == trained
    for folder_name in ("weights", "weights-raw"):
        for part in PARTS:
            _same_files(run / folder_name / f"{part}.safetensors", resumed / folder_name / f"{part}.safetensors")

    # the exports are full tensors: the raw ones are the gathered trainable weights of the last
    # checkpoint, the EMA ones its gathered EMA, and the frozen (sharded, never trained) weights
    # are the initial ones; a one-process pipeline loads each export as it is
    from ouroboros_core.pipeline import ImageTo3DPipeline

    initial = _initial_state(folder)
    prefixes = {"generator": "generator.", "reconstructor": "reconstructor.", "feedback-0": "feedback.0.", "feedback-1": "feedback.1."}
    for folder_name, recipe_file, checkpoint_file in (("weights-raw", "trained-raw.yaml", "model"), ("weights", "trained.yaml", "ema")):
        gathered = load_file(str(checkpoints / "step-00000002" / f"{checkpoint_file}.safetensors"))
        pipe = ImageTo3DPipeline.from_recipe(run / recipe_file)
        modules = {"generator": pipe.generator, "reconstructor": pipe.reconstructor, "feedback-0": pipe.encoders[0], "feedback-1": pipe.encoders[1]}
        trained_keys = 0
        for part, prefix in prefixes.items():
            exported = load_file(str(run / folder_name / f"{part}.safetensors"))
            loaded = modules[part].state_dict()
            assert exported.keys() == loaded.keys() == {k[len(prefix):] for k in initial if k.startswith(prefix)}, part
            for key, tensor in exported.items():
                assert torch.equal(loaded[key], tensor), (folder_name, part, key)
                full = prefix + key
                expected = gathered.get(full, initial[full])
                trained_keys += full in gathered
                assert torch.equal(tensor, expected), (folder_name, part, key)
        assert trained_keys == len(gathered)


def test_fsdp_trains_as_ddp_and_writes_the_same_checkpoint_layout(fsdp_run):
    """The same two steps with DDP (accelerate's --multi_gpu on the CPU): same samples and noise
    on each rank, so losses and gradient norms agree to float tolerance and the checkpoints hold
    the same tensors (names, shapes, values within tolerance) and the same trainer.json: an
    FSDP checkpoint resumes under DDP or one process, and the other way round."""
    folder, run, _ = fsdp_run
    launcher = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    ddp, _ = _launch(folder, "ddp", launcher, "multiprocess_driver.py", 2)
    fsdp_log, ddp_log = _log(run), _log(ddp)
    assert [line["step"] for line in fsdp_log] == [line["step"] for line in ddp_log] == [1, 2]
    for a, b in zip(fsdp_log, ddp_log):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    step = "step-00000002"
    assert json.loads((run / "checkpoints" / step / "trainer.json").read_text()) == json.loads((ddp / "checkpoints" / step / "trainer.json").read_text())
    initial = _initial_state(folder)
    for name in ("model", "ema", "optimizer"):
        a = load_file(str(run / "checkpoints" / step / f"{name}.safetensors"))
        b = load_file(str(ddp / "checkpoints" / step / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a), name
        # compare what training changed (weights) or built (moments); AdamW's first steps divide
        # by |g|, so compare as a whole, as test_multiprocess does
        start = {k: initial[k] for k in a} if name != "optimizer" else {k: torch.zeros_like(a[k]) for k in a}
        change_a = torch.cat([(a[k].float() - start[k].float()).flatten() for k in a])
        change_b = torch.cat([(b[k].float() - start[k].float()).flatten() for k in a])
        assert change_a.abs().mean() > 0
        assert float((change_a - change_b).abs().mean() / change_a.abs().mean()) < 1e-3, name


# ---------------------------------------------------------------- what the trainer refuses or reports
@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps a process-wide state; these tests make their own Accelerator."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_fsdp_version_1_is_refused_in_one_line():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from ouroboros_core.errors import UserError
    from ouroboros_core.trainer import _check_sharding

    with pytest.raises(UserError) as err:
        _check_sharding(SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=False))
    message = str(err.value)
    assert "\n" not in message and "FSDP version 1" in message
    assert "fsdp_version: 2" in message and "configs/accelerate/fsdp.yaml" in message
    _check_sharding(SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True))  # FSDP2 passes


def test_an_fsdp_config_on_the_cpu_is_reported_as_unsharded(monkeypatch, caplog):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from ouroboros_core.trainer import _check_sharding

    cpu = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, is_fsdp2=False, device=torch.device("cpu"))
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    with caplog.at_level("WARNING", logger="ouroboros_core.trainer"):
        _check_sharding(cpu)
    assert not caplog.records
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with caplog.at_level("WARNING", logger="ouroboros_core.trainer"):
        _check_sharding(cpu)
    assert len(caplog.records) == 1 and "only on GPUs" in caplog.records[0].getMessage()


def test_validation_images_are_refused_under_fsdp_before_anything_is_written(tmp_path, monkeypatch, fresh_accelerate_state):
    from ouroboros_core.errors import RecipeError
    from ouroboros_core.recipe import load_recipe
    from ouroboros_core.runs import train
    from ouroboros_core.trainer import JointTrainer

    monkeypatch.setattr(JointTrainer, "sharded", property(lambda self: True))
    recipe = load_recipe(write_small_recipe(tmp_path), [*SETS, "trainer.tensorboard=true", "trainer.validate_every=1"])
    with pytest.raises(RecipeError, match="validate_every") as err:
        train(recipe, tmp_path / "run", max_steps=1, progress=False)
    assert "\n" not in str(err.value) and "trainer.validate_every=0" in str(err.value)
    assert not (tmp_path / "run").exists()
