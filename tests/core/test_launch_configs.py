"""The shipped accelerate launch configs (configs/accelerate/) and the README's launch commands
go through accelerate's own launcher code: its argument parser, the config-file merge, the
environment it hands the training processes, and the plugin objects those processes build
from that environment. No GPU is needed for any of it."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "accelerate"
TRAIN = ["-m", "ouroboros_core.cli", "train", "--recipe", "svd-lgm-paper"]


def _launch(argv: list[str]):
    """accelerate launch's argument handling up to the point where it starts processes;
    returns (args, environment added for the processes)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args, defaults, mp_from_config = _validate_launch_command(launch_command_parser().parse_args(argv))
    env = dict(os.environ)
    if args.use_deepspeed:  # as launch_command does before deepspeed_launcher
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    elif args.multi_gpu or args.use_fsdp:
        env = prepare_multi_gpu_env(args)
    return args, {k: v for k, v in env.items() if os.environ.get(k) != v}


def test_every_config_is_shipped():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == ["deepspeed_zero2.yaml", "fsdp.yaml", "multi_gpu.yaml", "single_gpu.yaml"]


def test_single_gpu():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(CONFIGS / "single_gpu.yaml"))
    assert config.distributed_type == DistributedType.NO and config.num_processes == 1
    args, _ = _launch(["--config_file", str(CONFIGS / "single_gpu.yaml"), *TRAIN])
    assert not (args.multi_gpu or args.use_deepspeed or args.use_fsdp)
    assert (args.num_processes, args.mixed_precision, args.gpu_ids) == (1, "bf16", "0")


def test_ddp_on_one_and_on_two_machines():
    args, env = _launch(["--config_file", str(CONFIGS / "multi_gpu.yaml"), "--num_processes", "4", *TRAIN])
    assert args.multi_gpu and (args.nproc_per_node, args.num_machines) == ("4", 1)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    args, env = _launch([
        "--config_file", str(CONFIGS / "multi_gpu.yaml"), "--num_machines", "2", "--num_processes", "16",
        "--machine_rank", "1", "--main_process_ip", "10.0.0.1", *TRAIN,
    ])
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "8", 1)
    assert (args.rdzv_endpoint, args.rdzv_backend) == ("10.0.0.1:29500", "static")


def test_deepspeed_zero2_builds_its_plugin(monkeypatch):
    from accelerate.utils import DeepSpeedPlugin

    args, env = _launch(["--config_file", str(CONFIGS / "deepspeed_zero2.yaml"), *TRAIN])
    assert args.use_deepspeed and env["ACCELERATE_USE_DEEPSPEED"] == "true"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()  # what Accelerator() builds in each launched process
    ds = plugin.deepspeed_config
    assert plugin.zero_stage == 2 and ds["zero_optimization"]["stage"] == 2
    assert ds["gradient_accumulation_steps"] == 1 and ds["gradient_clipping"] == 1.0
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "none"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_fsdp_full_shard_builds_its_plugin(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    args, env = _launch(["--config_file", str(CONFIGS / "fsdp.yaml"), *TRAIN])
    assert args.use_fsdp and env["ACCELERATE_USE_FSDP"] == "true"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True  # FSDP2, full shard
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    assert "SpatioTemporalResBlock" in plugin.transformer_cls_names_to_wrap
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_fsdp_wraps_only_blocks_of_the_paper_recipe():
    """accelerate stops when a listed class is missing from the model, and the trainer calls the
    components (and the VAE) through methods FSDP does not gather: every class the config wraps
    is in svd-lgm-paper (built on the meta device), and none is a component, the VAE, or LGM's
    UpBlock (it pops its skips from a list argument, which FSDP copies)."""
    import torch
    import yaml

    from ouroboros_core.build import build_components
    from ouroboros_core.recipe import load_recipe

    wrapped = yaml.safe_load((CONFIGS / "fsdp.yaml").read_text())["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"].split(",")
    probe = load_recipe("svd-lgm-paper")
    nulls = ["generator.weights=null", "reconstructor.weights=null"] + [f"feedback.{i}.weights=null" for i in range(len(probe.model.feedback))]
    with torch.device("meta"):
        parts = build_components(load_recipe("svd-lgm-paper", nulls), device=torch.device("meta"), dtype=torch.float32)
    classes = {type(m).__name__ for component in (parts.generator, parts.reconstructor, *parts.encoders) for m in component.modules()}
    assert sorted(set(wrapped) - classes) == []
    never = {type(parts.generator).__name__, type(parts.reconstructor).__name__, type(parts.generator.vae).__name__, "UpBlock"}
    assert sorted(set(wrapped) & never) == []


def test_readme_launch_commands_parse():
    """Every `accelerate launch` line of the README names a shipped config and parses."""
    text = (ROOT / "README.md").read_text()
    commands = [" ".join(m.split()) for m in re.findall(r"^accelerate launch (?:.*\\\n)*.*$", text, flags=re.M)]
    assert len(commands) >= 4
    used = set()
    for command in commands:
        argv = shlex.split(command.replace("\\\n", " ").replace("\\", " "))[2:]
        config = argv[argv.index("--config_file") + 1]
        used.add(Path(config).name)
        assert (ROOT / config).is_file(), config
        args, _ = _launch(argv)
        assert args.module and args.training_script == "ouroboros_core.cli" and args.training_script_args[0] == "train"
    assert used == {"single_gpu.yaml", "multi_gpu.yaml", "deepspeed_zero2.yaml", "fsdp.yaml"}
