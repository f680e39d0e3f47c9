"""Training-data throughput: samples/s of the procedural set rendered on the fly, written to
disk in the official layout and read back (``ouroboros3d data synth`` + the official reader),
and held in memory, each through the trainer's DataLoader with 0 and ``--workers`` workers.

    python benchmarks/data.py --objects 32 --size 64 --views 8 --workers 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from torch.utils.data import Dataset

from ouroboros_core.data import OfficialMultiViewDataset, ProceduralMultiViewDataset, make_dataloader
from ouroboros_core.data.synth import synthesize


class InMemory(Dataset):
    """Every item of ``source`` decoded once and kept."""

    def __init__(self, source: Dataset):
        self.items = [source[i] for i in range(len(source))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def samples_per_second(dataset: Dataset, batch_size: int, workers: int, epochs: int) -> float:
    loader = make_dataloader(dataset, batch_size, seed=0, num_workers=workers)
    next(iter(loader))  # start the workers before timing
    start, seen = time.perf_counter(), 0
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            seen += batch["images"].shape[0]
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    report: dict[str, float] = {}
    procedural = ProceduralMultiViewDataset(args.objects, args.views, args.size)
    with tempfile.TemporaryDirectory() as root:
        synthesize(root, args.objects, size=args.size, workers=max(1, args.workers), progress=False)
        on_disk = OfficialMultiViewDataset(root, num_views=args.views, image_size=args.size)
        sets = {"rendered on the fly": procedural, "on disk (official layout)": on_disk, "in memory": InMemory(on_disk)}
        for name, dataset in sets.items():
            for workers in sorted({0, args.workers}):
                key = f"{name}, {workers} workers"
                report[key] = round(samples_per_second(dataset, args.batch_size, workers, args.epochs), 1)
                print(f"{key}: {report[key]} samples/s", flush=True)
    print(json.dumps({"objects": args.objects, "size": args.size, "views": args.views, "samples_per_s": report}, indent=1))


if __name__ == "__main__":
    main()
