"""Datasets: the official layout (written here as a tiny fake dataset) and the procedural one."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ouroboros_core.cameras import Cameras, unproject_depth
from ouroboros_core.data import (
    EpochShuffleSampler,
    OfficialMultiViewDataset,
    ProceduralMultiViewDataset,
    build_dataset,
    collate_multiview,
    make_dataloader,
)
from ouroboros_core.data.procedural import Primitive, render_scene
from ouroboros_core.errors import InputError, RecipeError
from ouroboros_core.recipe import DataConfig

N_ORBIT = 16
RADIUS = 2.0
SIZE = 8


def view_color(k: int) -> tuple[int, int, int]:
    """A colour that encodes the orbit index of a rendered view."""
    return (10 * k + 5, 200 - 10 * k, 77)


def blender_world() -> torch.Tensor:
    """An arbitrary rigid change of world frame (y-up to z-up, then a 30 degree spin about z)."""
    to_z_up = torch.tensor([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float64)
    a = math.radians(30)
    spin = torch.tensor([[math.cos(a), -math.sin(a), 0, 0], [math.sin(a), math.cos(a), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float64)
    return spin @ to_z_up


def write_object(root, object_id: str, n: int = N_ORBIT, fov: float = 0.69) -> None:
    """A 16-view orbit rendered in some Blender world: meta.json + RGBA PNGs (left half opaque)."""
    folder = root / object_id
    folder.mkdir(parents=True)
    cams = Cameras.orbit([360.0 / n * k for k in range(n)], 0.0, radius=RADIUS, dtype=torch.float64)
    c2w_gl = blender_world() @ cams.to_opengl()[0]
    locations = []
    for k in range(n):
        rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
        rgba[:, : SIZE // 2, :3] = view_color(k)
        rgba[:, : SIZE // 2, 3] = 255
        name = f"render_{k:04d}.png"
        Image.fromarray(rgba, "RGBA").save(folder / name)
        locations.append({"index": k, "transform_matrix": c2w_gl[k].tolist(), "frames": [{"name": name}]})
    (folder / "meta.json").write_text(json.dumps({"camera_angle_x": fov, "locations": locations}))


@pytest.fixture
def fake_root(tmp_path):
    for object_id in ("obj_a", "obj_b"):
        write_object(tmp_path, object_id)
    (tmp_path / "ids.txt").write_text("obj_b\nobj_a\n")
    return tmp_path


def orbit_index_of(images: torch.Tensor) -> list[int]:
    """Decode the orbit index from the colour of each view's opaque half."""
    red = (images[:, 0, 0, 0] * 255).round().int().tolist()
    return [(r - 5) // 10 for r in red]


def test_official_layout_selection_and_canonical_cameras(fake_root):
    ds = OfficialMultiViewDataset(fake_root, fake_root / "ids.txt", num_views=8, image_size=SIZE, random_start_view=False)
    assert ds.ids == ["obj_b", "obj_a"]
    item = ds[0]
    assert item["id"] == "obj_b"
    assert item["images"].shape == (8, 3, SIZE, SIZE) and item["alpha"].shape == (8, 1, SIZE, SIZE)
    assert orbit_index_of(item["images"]) == [0, 2, 4, 6, 8, 10, 12, 15]
    # camera 0: rotation diag(1, -1, -1) at (0, 0, d0), whatever the Blender world was
    c2w = item["c2w"].double()
    assert torch.allclose(c2w[0, :3, :3], torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)), atol=1e-6)
    assert torch.allclose(c2w[0, :3, 3], torch.tensor([0, 0, RADIUS], dtype=torch.float64), atol=1e-6)
    # all views: the same orbit as our own y-up construction at 0, 45, ..., 270, 337.5 degrees
    expected = Cameras.orbit([22.5 * k for k in (0, 2, 4, 6, 8, 10, 12, 15)], 0.0, radius=RADIUS, dtype=torch.float64)
    assert torch.allclose(c2w, expected.c2w[0], atol=1e-5)
    f = 0.5 / math.tan(0.69 / 2)
    assert torch.allclose(item["intrinsics"][0], torch.tensor([[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]]), atol=1e-6)
    # alpha kept separately, rgb composited on white
    assert torch.equal(item["alpha"][:, :, :, : SIZE // 2], torch.ones(8, 1, SIZE, SIZE // 2))
    assert torch.equal(item["alpha"][:, :, :, SIZE // 2 :], torch.zeros(8, 1, SIZE, SIZE // 2))
    assert torch.equal(item["images"][:, :, :, SIZE // 2 :], torch.ones(8, 3, SIZE, SIZE // 2))


def test_official_random_start_rolls_the_orbit_reproducibly(fake_root):
    ds = OfficialMultiViewDataset(fake_root, num_views=8, image_size=SIZE, seed=5)
    seen = set()
    expected_cams = Cameras.orbit([22.5 * k for k in (0, 2, 4, 6, 8, 10, 12, 15)], 0.0, radius=RADIUS)
    for epoch in range(6):
        ds.set_epoch(epoch)
        item = ds[1]
        idx = orbit_index_of(item["images"])
        start = idx[0]
        assert idx == [(start + k) % N_ORBIT for k in (0, 2, 4, 6, 8, 10, 12, 15)]
        # the rolled orbit is canonicalised to the same cameras
        assert torch.allclose(item["c2w"], expected_cams.c2w[0], atol=1e-5)
        assert torch.equal(ds[1]["images"], item["images"])  # same (seed, epoch, index): same item
        seen.add(start)
    assert len(seen) > 1


def test_official_resize_and_collate(fake_root):
    ds = OfficialMultiViewDataset(fake_root, num_views=4, image_size=4, random_start_view=False)
    assert orbit_index_of(ds[0]["images"]) == [0, 5, 10, 15]  # linspace(0, 15, 4) rounded down
    batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=collate_multiview)))
    assert batch["ids"] == ["obj_a", "obj_b"]
    assert batch["images"].shape == (2, 4, 3, 4, 4)
    assert isinstance(batch["cameras"], Cameras) and batch["cameras"].c2w.shape == (2, 4, 4, 4)


def test_official_errors_name_the_file(fake_root, tmp_path_factory):
    (fake_root / "obj_a" / "meta.json").unlink()
    ds = OfficialMultiViewDataset(fake_root, fake_root / "ids.txt", image_size=SIZE)
    with pytest.raises(InputError, match="obj_a/meta.json: meta.json is missing"):
        ds[1]
    wrong = OfficialMultiViewDataset(fake_root, fake_root / "ids.txt", image_size=SIZE, orbit_views=32)
    with pytest.raises(InputError, match="16 locations, expected 32.*orbit_views"):
        wrong[0]
    with pytest.raises(InputError, match="ids file does not exist"):
        OfficialMultiViewDataset(fake_root, fake_root / "nope.txt")
    with pytest.raises(RecipeError, match="trainer.data.root"):
        build_dataset(DataConfig(kind="official"))


def test_procedural_shapes_cameras_and_determinism():
    ds = ProceduralMultiViewDataset(num_objects=3, num_views=8, image_size=24, seed=1)
    item = ds[2]
    assert item["images"].shape == (8, 3, 24, 24) and item["alpha"].shape == (8, 1, 24, 24)
    assert item["images"].min() >= 0 and item["images"].max() <= 1
    official = Cameras.official()
    assert torch.allclose(item["c2w"], official.c2w[0], atol=1e-6)
    assert torch.allclose(item["intrinsics"], official.intrinsics[0])
    again = ProceduralMultiViewDataset(num_objects=3, num_views=8, image_size=24, seed=1)[2]
    assert torch.equal(again["images"], item["images"])
    assert not torch.equal(ds[1]["images"], item["images"])
    # background is white, every view sees something
    assert torch.equal(item["images"][item["alpha"].expand_as(item["images"]) == 0], torch.ones(int((item["alpha"] == 0).sum()) * 3))
    assert (item["alpha"].flatten(1).sum(1) > 0).all()
    for index in range(3):  # the whole object is inside every view: nothing touches the border
        a = ds[index]["alpha"][:, 0]
        assert a[:, [0, -1], :].sum() == 0 and a[:, :, [0, -1]].sum() == 0
    batch = collate_multiview([ds[0], ds[1]])
    assert batch["cameras"].c2w.shape == (2, 8, 4, 4)
    assert isinstance(build_dataset(DataConfig(num_objects=2, image_size=8)), ProceduralMultiViewDataset)


def test_procedural_sphere_silhouette_and_depth_match_geometry():
    """A sphere of radius r at the origin, camera at distance D: a pixel ray hits it iff its angle
    to the optical axis is below asin(r / D); the central depth is D - r."""
    r = 0.4
    sphere = Primitive("sphere", torch.zeros(3, dtype=torch.float64), torch.tensor([r], dtype=torch.float64), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    cams = Cameras.official()
    H = W = 32
    rgb, alpha, depth = render_scene([sphere], cams, H, W)
    K = cams.intrinsics[0, 0].double()
    j, i = torch.meshgrid(torch.arange(W, dtype=torch.float64), torch.arange(H, dtype=torch.float64), indexing="xy")
    x = ((j + 0.5) / W - K[0, 2]) / K[0, 0]
    y = ((i + 0.5) / H - K[1, 2]) / K[1, 1]
    angle = torch.atan(torch.sqrt(x**2 + y**2))
    limit = math.asin(r / cams.centers[0, 0].norm().item())
    inside, outside = angle < limit - 1e-3, angle > limit + 1e-3
    for v in range(8):
        assert (alpha[v, 0][inside] == 1).all() and (alpha[v, 0][outside] == 0).all()
    d0 = cams.centers[0, 0].norm().item() - r
    # the pixels nearest the image centre look almost straight at the sphere centre
    assert depth[0, 0, H // 2, W // 2].item() == pytest.approx(d0, abs=2e-3)
    assert (depth[alpha == 0] == 0).all()


def box_sdf(p: torch.Tensor, prim: Primitive) -> torch.Tensor:
    q = (p - prim.center).abs() - prim.size
    return q.clamp_min(0).norm(dim=-1) + q.max(-1).values.clamp_max(0)


def test_procedural_foreground_points_lie_on_primitives():
    ds = ProceduralMultiViewDataset(num_objects=4, num_views=8, image_size=20, seed=3)
    for index in range(4):
        scene = ds.scene(index)
        cams = ds.cameras.to(dtype=torch.float64)
        _, alpha, depth = render_scene(scene, cams, 20, 20)
        assert torch.equal(alpha, ds[index]["alpha"])
        pts = unproject_depth(depth[None].double(), cams)[0].permute(0, 2, 3, 1)[alpha[:, 0] > 0]  # (N, 3)
        dist = torch.stack(
            [
                ((pts - p.center).norm(dim=-1) - p.size[0]).abs() if p.kind == "sphere" else box_sdf(pts, p).abs()
                for p in scene
            ]
        ).min(0).values
        assert dist.max().item() < 1e-4  # float32 depth at ~1.5 m


def test_epoch_shuffle_depends_only_on_seed_and_epoch():
    a, b = EpochShuffleSampler(10, seed=3), EpochShuffleSampler(10, seed=3)
    orders = []
    for epoch in range(3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        torch.manual_seed(epoch)  # the global RNG plays no part
        order = list(a)
        assert sorted(order) == list(range(10)) and order == list(b)
        orders.append(order)
    assert orders[0] != orders[1] != orders[2]
    loader = make_dataloader(ProceduralMultiViewDataset(num_objects=5, image_size=8), batch_size=2)
    assert len(loader) == 2  # full batches only
    assert next(iter(loader))["images"].shape == (2, 8, 3, 8, 8)
