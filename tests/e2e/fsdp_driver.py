"""``ouroboros3d train``'s own :func:`ouroboros_core.runs.train` under accelerate's FSDP2 on the
CPU (torch.distributed with gloo), for ``test_fsdp.py``.

accelerate builds FSDP only on accelerators: launched with an FSDP config on the CPU it sets the
distributed type to MULTI_CPU (plain data parallel) and never uses the plugin. So that FSDP can
be tested without a GPU, this driver sets the type back to FSDP, in ``AcceleratorState`` and
``PartialState`` as accelerate itself does on GPUs, with the plugin built from the ``FSDP_*``
environment the launcher wrote from the config, right after the trainer makes its accelerator
and before the model is prepared. Everything after that is accelerate's and torch's own code:
``fully_shard`` with the config's wrap policy, gradient sync and clipping on DTensors, and the
trainer's gathering and scattering of full tensors.

Per process it writes ``<probe>/rank<R>.json`` (whether the trainer saw FSDP2, how many
trainable elements this process holds and how many the model has) and, through
``multiprocess_driver``'s recorder, every file it opens for writing in the run folder to
``<probe>/writes<R>.txt``. ``RESUME=<checkpoint folder>`` resumes.

    accelerate launch --config_file CPU_FSDP_CONFIG fsdp_driver.py RECIPE RUN_DIR PROBE_DIR MAX_STEPS [KEY=VALUE ...]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _fsdp_on_cpu(make_accelerator):
    """Wrap the trainer's accelerator factory so that the accelerator it returns runs FSDP."""

    def make(config, device):
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        accelerator = make_accelerator(config, device)
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
        accelerator.state.distributed_type = DistributedType.FSDP
        # AcceleratorState() copies PartialState's type whenever accelerate builds one again
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        return accelerator

    return make


def main() -> None:
    recipe_path, run_dir, probe_dir, max_steps, *sets = sys.argv[1:]
    import ouroboros_core.trainer as trainer_module
    from multiprocess_driver import _record_writes
    from ouroboros_core.recipe import load_recipe
    from ouroboros_core.runs import train

    probe = Path(probe_dir)
    probe.mkdir(parents=True, exist_ok=True)
    trainer_module._make_accelerator = _fsdp_on_cpu(trainer_module._make_accelerator)
    original = trainer_module.JointTrainer.train

    def train_and_report(self, *args, **kwargs):
        params = [p for p in self.components.parameters() if p.requires_grad]
        local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in params)
        report = {"sharded": self.sharded, "local": local, "full": sum(p.numel() for p in params)}
        (probe / f"rank{self.accelerator.process_index}.json").write_text(json.dumps(report))
        return original(self, *args, **kwargs)

    trainer_module.JointTrainer.train = train_and_report
    _record_writes(Path(run_dir), probe)
    train(load_recipe(recipe_path, sets), run_dir, resume=os.environ.get("RESUME"), max_steps=int(max_steps), progress=False)


if __name__ == "__main__":
    main()
