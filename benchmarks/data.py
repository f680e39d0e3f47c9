"""Training-data throughput: samples/s of the procedural set rendered on the fly, written to
disk in the official layout and read back (``ouroboros3d data synth`` + the official reader),
read back through a filled decoded-view cache (``trainer.data.cache_dir``, what every epoch
after the first and every later run sees), and held in memory, each through the trainer's
DataLoader with 0 and ``--workers`` workers; the median of ``--repeats`` timings.
``--source-size`` writes larger PNGs than are read, so reading also resizes, as with real renders;
``--sets`` picks the rows (rendering on the fly is slow at large sizes).

    python benchmarks/data.py --objects 32 --size 64 --views 8 --workers 2 --repeats 3
    python benchmarks/data.py --objects 8 --size 128 --source-size 256 --sets disk cache memory
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

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


#: the rows, by --sets name
SETS = {
    "procedural": "rendered on the fly", "disk": "on disk (official layout)",
    "cache": "on disk, decoded-view cache", "memory": "in memory",
}


def samples_per_second(dataset: Dataset, batch_size: int, workers: int, epochs: int) -> float:
    loader = make_dataloader(dataset, batch_size, seed=0, num_workers=workers)
    next(iter(loader))  # start the workers before timing
    start, seen = time.perf_counter(), 0
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            seen += batch["images"].shape[0]
    return seen / (time.perf_counter() - start)


def fill_cache(dataset: OfficialMultiViewDataset) -> None:
    """Decode every view of every object into ``dataset``'s cache (all orbit views, since each
    epoch draws other start views)."""
    for object_id in dataset.ids:
        for location in json.loads((dataset.root / object_id / "meta.json").read_text())["locations"]:
            name = location["frames"][0]["name"]
            dataset.cache.load(dataset.root / object_id / name, dataset.cache.entry(object_id, name, dataset.image_size), dataset.image_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timings per setting; the median is reported")
    parser.add_argument("--source-size", type=int, default=None, help="side of the PNGs written (default: --size)")
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS), help="which rows to measure")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "data"
        synthesize(root, args.objects, size=args.source_size or args.size, workers=max(1, args.workers), progress=False)
        on_disk = OfficialMultiViewDataset(root, num_views=args.views, image_size=args.size)
        cached = OfficialMultiViewDataset(root, num_views=args.views, image_size=args.size, cache_dir=Path(folder) / "cache")
        if "cache" in args.sets:
            fill_cache(cached)
        datasets = {
            "procedural": lambda: ProceduralMultiViewDataset(args.objects, args.views, args.size), "disk": lambda: on_disk,
            "cache": lambda: cached, "memory": lambda: InMemory(on_disk),
        }
        for name in args.sets:
            dataset = datasets[name]()
            for workers in sorted({0, args.workers}):
                key = f"{SETS[name]}, {workers} workers"
                timings = [samples_per_second(dataset, args.batch_size, workers, args.epochs) for _ in range(args.repeats)]
                report[key] = round(statistics.median(timings), 1)
                print(f"{key}: {report[key]} samples/s", flush=True)
    settings = {k: getattr(args, k) for k in ("objects", "size", "source_size", "views", "batch_size", "workers", "epochs", "repeats")}
    print(json.dumps({**settings, "samples_per_s": report}, indent=1))


if __name__ == "__main__":
    main()
