"""The official reader's decoded-view cache (trainer.data.cache_dir): a hit gives exactly the
tensors a fresh decode gives without decoding, a changed PNG or a corrupt entry is decoded again,
a broken object is still counted and skipped, loader workers share the folder, and a folder that
cannot be written only costs speed."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from ouroboros_core.data import build_dataset, make_dataloader
from ouroboros_core.data import official
from ouroboros_core.data.official import OfficialMultiViewDataset
from ouroboros_core.data.synth import synthesize
from ouroboros_core.recipe import DataConfig

VIEWS, SIZE = 4, 12  # synthesised at 16 pixels: the cached views are resized ones


@pytest.fixture
def root(tmp_path):
    return synthesize(tmp_path / "data", 3, seed=2, size=16, progress=False)


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Names of the PNGs decoded, in order."""
    calls: list[str] = []
    real = official.decode_rgba

    def counting(path, size):
        calls.append(path.name)
        return real(path, size)

    monkeypatch.setattr(official, "decode_rgba", counting)
    return calls


def _dataset(root, cache_dir=None) -> OfficialMultiViewDataset:
    return OfficialMultiViewDataset(root, num_views=VIEWS, image_size=SIZE, seed=4, cache_dir=cache_dir)


def _assert_same(a: dict, b: dict) -> None:
    assert a["id"] == b["id"]
    for key in ("images", "alpha", "c2w", "intrinsics"):
        assert torch.equal(a[key], b[key]), key


def _entries(cache) -> list:
    return sorted(p for p in cache.rglob("*") if p.is_file())


def test_a_hit_gives_the_fresh_decode_without_decoding(root, tmp_path, decodes):
    cache = tmp_path / "cache"
    fresh = _dataset(root)
    expected = [fresh[i] for i in range(3)]
    decodes.clear()
    cached = _dataset(root, cache)
    for i in range(3):  # first epoch: decoded once per view and written
        _assert_same(cached[i], expected[i])
    assert len(decodes) == 3 * VIEWS and len(_entries(cache)) == 3 * VIEWS
    decodes.clear()
    again = _dataset(root, cache)  # a later run on the same cache decodes nothing
    for i in range(3):
        _assert_same(again[i], expected[i])
    assert decodes == []
    entry = _entries(cache)[0]
    assert entry.name.endswith(f".png.{SIZE}px.safetensors") and entry.parent.parent == cache
    with safe_open(str(entry), framework="np") as f:
        assert f.get_tensor("rgba").shape == (SIZE, SIZE, 4)
        assert f.metadata()["source"] == str((root / entry.parent.name / entry.name.split(".png")[0]).resolve()) + ".png"
    assert not [p for p in cache.rglob(".*")]  # no temporary files left


def test_a_changed_png_is_decoded_again(root, tmp_path, decodes):
    cache = tmp_path / "cache"
    first = _dataset(root, cache)[0]
    png = root / first["id"] / "render_0000.png"
    rgba = np.asarray(Image.open(png).convert("RGBA"))[::-1].copy()  # re-rendered: upside down
    Image.fromarray(rgba, "RGBA").save(png)
    stat = png.stat()
    os.utime(png, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # even on a coarse-clock file system
    decodes.clear()
    item = _dataset(root, cache)[0]
    assert decodes == ["render_0000.png"]  # only the changed view
    _assert_same(item, _dataset(root)[0])
    assert not torch.equal(item["images"], first["images"])
    decodes.clear()
    _dataset(root, cache)[0]
    assert decodes == []  # the rebuilt entry is current


def test_a_corrupt_entry_is_rebuilt_not_fatal(root, tmp_path, decodes, caplog):
    cache = tmp_path / "cache"
    expected = _dataset(root, cache)[1]
    broken, truncated = _entries(cache)[:2]  # two views of the object read
    broken.write_bytes(b"not a safetensors file")
    truncated.write_bytes(truncated.read_bytes()[:-20])
    decodes.clear()
    with caplog.at_level(logging.WARNING, logger=official.__name__):
        _assert_same(_dataset(root, cache)[1], expected)
    assert sorted(decodes) == sorted(p.name.split(".png")[0] + ".png" for p in (broken, truncated))
    assert sum("cache entry cannot be read" in r.getMessage() for r in caplog.records) == 2
    decodes.clear()
    _assert_same(_dataset(root, cache)[1], expected)
    assert decodes == []


def test_broken_objects_are_still_counted_and_skipped(root, tmp_path):
    cache = tmp_path / "cache"
    ids = _dataset(root).ids
    (root / ids[0] / "render_0000.png").write_bytes(b"\x89PNG broken")
    dataset = OfficialMultiViewDataset(root, num_views=VIEWS, image_size=SIZE, random_start_view=False, cache_dir=cache)
    assert dataset[0]["id"] == ids[1] and dataset.skipped == {ids[0]}
    assert not (cache / ids[0] / "render_0000.png.12px.safetensors").exists()
    (root / ids[1] / "render_0000.png").unlink()  # a missing view: skipped as without a cache
    dataset = OfficialMultiViewDataset(root, num_views=VIEWS, image_size=SIZE, random_start_view=False, cache_dir=cache)
    assert dataset[0]["id"] == ids[2] and dataset.skipped == {ids[0], ids[1]}


def test_loader_workers_fill_and_share_the_cache(root, tmp_path):
    cache = tmp_path / "cache"
    plain = [(b["ids"], b["images"]) for b in make_dataloader(_dataset(root), batch_size=1, seed=1)]
    for _ in range(2):  # the first pass writes from two workers, the second reads
        loader = make_dataloader(_dataset(root, cache), batch_size=1, seed=1, num_workers=2)
        batches = [(b["ids"], b["images"]) for b in loader]
        assert [ids for ids, _ in batches] == [ids for ids, _ in plain]
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(batches, plain))
    assert len(_entries(cache)) == 3 * VIEWS and not [p for p in cache.rglob(".*")]


def test_an_unwritable_cache_folder_only_warns_once(root, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a cache folder below a file cannot be made, even by root
    with caplog.at_level(logging.WARNING, logger=official.__name__):
        dataset = _dataset(root, blocker / "cache")
        items = [dataset[i] for i in range(3)]
    for item, expected in zip(items, (_dataset(root)[i] for i in range(3))):
        _assert_same(item, expected)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["cannot write the decoded-view cache, reading uncached"]


def test_the_recipe_key_turns_it_on(root, tmp_path):
    config = DataConfig(kind="official", root=str(root), cache_dir=str(tmp_path / "cache"))
    dataset = build_dataset(config, num_views=VIEWS, image_size=SIZE)
    assert dataset.cache is not None and dataset.cache.folder == tmp_path / "cache"
    assert build_dataset(DataConfig(kind="official", root=str(root)), num_views=VIEWS, image_size=SIZE).cache is None
