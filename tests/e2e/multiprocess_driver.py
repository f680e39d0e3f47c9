"""Training entry point for the multi-process tests (run under ``accelerate launch`` or plain
``python``): ``ouroboros3d train``'s own :func:`ouroboros_core.runs.train`, with a probe on
:meth:`JointTrainer.train_step` that writes, per process, one JSON line per optimiser step to
``<probe>/rank<R>.jsonl``: the ids of the objects this process trained on, its losses, and a
SHA-256 of every trainable tensor after the step (bit identity across processes); and every
file it opens for writing in the run folder to ``<probe>/writes<R>.txt``. With
``HANG_IN_CHECKPOINT=00000003`` in the environment it stops for good right after writing that
checkpoint's model file (the optimizer, RNG and trainer files not yet written), after touching
``<probe>/hanging<R>``, for a test to kill it there; every process writes its id to
``<probe>/pid<R>`` first (the launcher starts each rank in a session of its own, so a test
kills them by id). ``RESUME=latest`` (or a checkpoint folder) resumes the run.

    python multiprocess_driver.py RECIPE RUN_DIR PROBE_DIR MAX_STEPS [KEY=VALUE ...]
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path


def main() -> None:
    recipe_path, run_dir, probe_dir, max_steps, *sets = sys.argv[1:]
    from ouroboros_core.recipe import load_recipe
    from ouroboros_core.runs import train
    from ouroboros_core.trainer import JointTrainer

    probe = Path(probe_dir)
    probe.mkdir(parents=True, exist_ok=True)
    (probe / f"pid{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
    original = JointTrainer.train_step

    def train_step(self, batches):
        logs = original(self, batches)
        digest = hashlib.sha256()
        for name, param in self.components.named_parameters():
            if param.requires_grad:
                digest.update(name.encode())
                digest.update(param.detach().cpu().contiguous().numpy().tobytes())
        line = {
            "step": self.step,
            "rank": self.accelerator.process_index,
            "processes": self.accelerator.num_processes,
            "ids": [i for batch in batches for i in batch["ids"]],
            "losses": logs,
            "digest": digest.hexdigest(),
        }
        with (probe / f"rank{self.accelerator.process_index}.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")
        return logs

    JointTrainer.train_step = train_step
    _record_writes(Path(run_dir), probe)
    train(load_recipe(recipe_path, sets), run_dir, resume=os.environ.get("RESUME"), max_steps=int(max_steps), progress=False)


def _record_writes(run_dir: Path, probe: Path) -> None:
    """Append every file this process opens for writing under ``run_dir`` (Python's ``open``,
    safetensors' ``save_file``, which writes from Rust) to ``<probe>/writes<R>.txt``."""
    import builtins
    import io

    import safetensors.torch

    rank = os.environ.get("RANK", "0")
    log = probe / f"writes{rank}.txt"
    root = str(run_dir.resolve())
    real_open, real_save = builtins.open, safetensors.torch.save_file

    def note(path) -> None:
        target = os.path.abspath(os.fspath(path))
        if target.startswith(root + os.sep):
            with real_open(log, "a") as f:
                f.write(target + "\n")

    def recording_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            note(file)
        return real_open(file, mode, *args, **kwargs)

    hang = os.environ.get("HANG_IN_CHECKPOINT")  # e.g. "00000003": stop for good halfway through writing it

    def recording_save(tensors, filename, *args, **kwargs):
        note(filename)
        result = real_save(tensors, filename, *args, **kwargs)
        if hang and f".step-{hang}.tmp-" in str(filename) and str(filename).endswith("model.safetensors"):
            (probe / f"hanging{rank}").write_text(str(filename))  # the test kills -9 this process now
            import time

            while True:
                time.sleep(1)
        return result

    builtins.open = io.open = recording_open
    safetensors.torch.save_file = recording_save


if __name__ == "__main__":
    main()
