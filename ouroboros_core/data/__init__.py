"""Multi-view training data.

Every dataset item is a dict::

    id: str
    images: (V, 3, H, W) float in [0, 1], composited on the background (white)
    alpha: (V, 1, H, W) float in [0, 1]
    c2w: (V, 4, 4) OpenCV camera-to-world, canonicalised so view 0 sits at (0, 0, d0) on +z
    intrinsics: (V, 3, 3) normalised

:func:`collate_multiview` batches items into what the trainer reads: ``images``
``(B, V, 3, H, W)``, ``alpha``, ``cameras`` (:class:`~ouroboros_core.cameras.Cameras`) and ``ids``.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..cameras import Cameras
from ..recipe import DataConfig
from .official import OfficialMultiViewDataset
from .procedural import ProceduralMultiViewDataset


def collate_multiview(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack dataset items into a batch with a :class:`Cameras` (use as a DataLoader's collate_fn)."""
    return {
        "ids": [item["id"] for item in items],
        "images": torch.stack([item["images"] for item in items]),
        "alpha": torch.stack([item["alpha"] for item in items]),
        "cameras": Cameras(torch.stack([item["c2w"] for item in items]), torch.stack([item["intrinsics"] for item in items])),
    }


def build_dataset(config: DataConfig, seed: int = 0, num_views: int = 8, image_size: int = 512) -> Dataset:
    """The dataset a recipe's ``trainer.data`` section describes; views and image size the
    section leaves unset come from the arguments (a recipe passes its generator's)."""
    config = config.model_copy(
        update={"num_views": config.num_views or num_views, "image_size": config.image_size or image_size}
    )
    if config.kind == "official":
        return OfficialMultiViewDataset.from_config(config, seed)
    return ProceduralMultiViewDataset.from_config(config, seed)


class EpochShuffleSampler(Sampler[int]):
    """A shuffle that depends only on (seed, epoch): the order a resumed run needs to see again.

    The trainer calls ``set_epoch`` before every epoch (``torch``'s ``RandomSampler`` would draw
    its order from the global RNG at a time that differs between a resumed and a straight run).
    """

    def __init__(self, length: int, seed: int = 0):
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=g).tolist())


def make_dataloader(dataset: Dataset, batch_size: int, seed: int = 0, shuffle: bool = True, num_workers: int = 0) -> DataLoader:
    """A training loader: epoch-seeded shuffling, :func:`collate_multiview`, full batches only.

    Workers are started anew each epoch (not persistent), so each gets a copy of the dataset
    after its ``set_epoch`` (the official reader draws start views by epoch)."""
    sampler = EpochShuffleSampler(len(dataset), seed) if shuffle else None
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_multiview,
        num_workers=num_workers, drop_last=len(dataset) >= batch_size,
    )


__all__ = [
    "EpochShuffleSampler", "OfficialMultiViewDataset", "ProceduralMultiViewDataset",
    "build_dataset", "collate_multiview", "make_dataloader",
]
