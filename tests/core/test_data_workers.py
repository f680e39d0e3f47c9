"""The training loader with worker processes (trainer.data.num_workers) yields exactly what the
single-process loader yields, epoch after epoch (random start views included), on procedural
objects written to disk."""

from __future__ import annotations

import torch

from ouroboros_core.data import OfficialMultiViewDataset, make_dataloader
from ouroboros_core.data.synth import synthesize


def _epochs(loader, epochs: int) -> list[tuple[list[str], torch.Tensor]]:
    out = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)  # as the trainer does: sampler and dataset
        loader.dataset.set_epoch(epoch)
        out += [(batch["ids"], batch["images"]) for batch in loader]
    return out


def test_workers_give_the_same_batches_in_the_same_order(tmp_path):
    synthesize(tmp_path, 5, seed=3, size=16, progress=False)
    dataset = OfficialMultiViewDataset(tmp_path, num_views=4, image_size=16, orbit_views=16)
    plain = make_dataloader(dataset, batch_size=2, seed=1)
    workers = make_dataloader(dataset, batch_size=2, seed=1, num_workers=2)
    assert workers.num_workers == 2
    a, b = _epochs(plain, 2), _epochs(workers, 2)
    assert [ids for ids, _ in a] == [ids for ids, _ in b] and len(a) == 4  # 2 full batches per epoch
    assert [ids for ids, _ in a[:2]] != [ids for ids, _ in a[2:]]  # the order changes with the epoch
    for (_, x), (_, y) in zip(a, b):  # the same start views too (drawn by epoch in the workers' copies)
        assert torch.equal(x, y)
    assert dataset.random_start_view
