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
from ouroboros_core.data.procedural import SCENE_RADIUS, Primitive, _random_rotation, render_scene, scene_sdf
from ouroboros_core.errors import InputError, RecipeError, UserError
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


def test_broken_objects_are_skipped_counted_and_named(fake_root, caplog):
    (fake_root / "obj_a" / "meta.json").unlink()
    ds = OfficialMultiViewDataset(fake_root, fake_root / "ids.txt", image_size=SIZE)
    with caplog.at_level("WARNING"):
        item = ds[1]  # obj_a is broken: the next readable object (wrapping around) comes instead
    assert item["id"] == "obj_b" and ds.skipped == {"obj_a"}
    assert "obj_a/meta.json: meta.json is missing" in caplog.text and "1 skipped" in caplog.text
    assert ds[1]["id"] == "obj_b"  # known broken: not read again
    # a corrupt view is a broken object too
    write_object(fake_root, "obj_c")
    (fake_root / "obj_c" / "render_0000.png").write_bytes(b"not a png")
    ds = OfficialMultiViewDataset(fake_root, image_size=SIZE, random_start_view=False)
    assert ds.ids == ["obj_b", "obj_c"]  # obj_a has no meta.json: not an object of the folder
    assert [ds[i]["id"] for i in range(len(ds))] == ["obj_b", "obj_b"]
    assert ds.skipped == {"obj_c"}
    # nothing readable: one error naming the first problem, no endless retry
    wrong = OfficialMultiViewDataset(fake_root, fake_root / "ids.txt", image_size=SIZE, orbit_views=32)
    with pytest.raises(InputError) as err:
        wrong[0]
    assert "none of the 2 objects can be read" in err.value.format()
    assert "16 locations, expected 32" in err.value.format() and "orbit_views" in err.value.format()
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


def test_procedural_foreground_points_lie_on_the_parts():
    ds = ProceduralMultiViewDataset(num_objects=6, num_views=8, image_size=20, seed=3)
    kinds = set()
    for index in range(6):
        scene = ds.scene(index)
        kinds |= {p.kind for p in scene}
        cams = ds.cameras.to(dtype=torch.float64)
        _, alpha, depth = render_scene(scene, cams, 20, 20)
        pts = unproject_depth(depth[None].double(), cams)[0].permute(0, 2, 3, 1)[alpha[:, 0] > 0]  # (N, 3)
        assert len(pts) > 0
        assert scene_sdf(scene, pts.double())[0].abs().max().item() < 1e-4  # float32 depth at ~1.5 m
        for part in scene:  # every part lies inside the ball all cameras see whole
            assert part.center.norm().item() + part.bounding_radius() <= SCENE_RADIUS + 1e-9
    assert len(kinds) >= 3


def _inside(kind: str, p: torch.Tensor, s: list[float]) -> torch.Tensor:
    """Independent inside tests of the canonical primitives (local frame)."""
    x, y, z = p.unbind(-1)
    radial = torch.sqrt(x * x + z * z)
    if kind == "sphere":
        return p.norm(dim=-1) < s[0]
    if kind == "box":
        return (p.abs() < torch.tensor(s, dtype=p.dtype)).all(-1)
    if kind == "cylinder":
        return (radial < s[0]) & (y.abs() < s[1])
    if kind == "cone":  # radius shrinks linearly from s[0] at y = -h to 0 at y = +h
        return (y.abs() < s[1]) & (radial < s[0] * (s[1] - y) / (2 * s[1]))
    if kind == "torus":
        return (radial - s[0]) ** 2 + y * y < s[1] ** 2
    return torch.sqrt(x * x + (y - y.clamp(-s[1], s[1])) ** 2 + z * z) < s[0]  # capsule


@pytest.mark.parametrize("kind,size", [
    ("sphere", [0.3]), ("box", [0.1, 0.2, 0.15]), ("cylinder", [0.15, 0.2]),
    ("cone", [0.2, 0.25]), ("torus", [0.2, 0.07]), ("capsule", [0.1, 0.15]),
])
def test_primitive_distances_match_a_brute_force_surface(kind, size):
    """The sign of each SDF is the independent inside test; outside, its value is the distance
    to the nearest inside point of a dense grid (within one grid-cell diagonal)."""
    rot = _random_rotation(torch.Generator().manual_seed(5))
    part = Primitive(kind, torch.tensor([0.05, -0.02, 0.03], dtype=torch.float64), torch.tensor(size, dtype=torch.float64), torch.ones(3, dtype=torch.float64), rot)
    g = torch.Generator().manual_seed(1)
    queries = part.center + (torch.rand(400, 3, generator=g, dtype=torch.float64) - 0.5) * 1.2
    local = part.local(queries)
    d = part.sdf(queries)
    assert torch.equal(d < 0, _inside(kind, local, size))
    step = 0.008
    axis = torch.arange(-0.36, 0.36 + 1e-9, step, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    solid = grid[_inside(kind, grid, size)]
    outside = d > 0.02
    nearest = torch.cdist(local[outside], solid).min(1).values
    # no inside point is nearer than the true distance; the grid's nearest is at most a cell diagonal farther
    assert (d[outside] <= nearest + 1e-9).all()
    assert (nearest - d[outside]).max().item() < step * math.sqrt(3)


def test_splits_never_share_an_object_and_synth_matches_the_procedural_set(tmp_path):
    from ouroboros_core.data.procedural import scene_seed
    from ouroboros_core.data.synth import synthesize

    train = {scene_seed(0, "train", i) for i in range(5000)}
    held = {scene_seed(0, "heldout", i) for i in range(5000)}
    assert not train & held
    root = synthesize(tmp_path / "ds", 3, seed=2, split="heldout", size=24, progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["heldout-00000", "heldout-00001", "heldout-00002", "synth.json"]
    official = OfficialMultiViewDataset(root, image_size=24, random_start_view=False)
    memory = ProceduralMultiViewDataset(3, image_size=24, seed=2, split="heldout")
    for i in range(3):
        a, b = official[i], memory[i]
        assert a["id"] == b["id"]
        assert (a["images"] - b["images"]).abs().max() < 0.01  # 8-bit PNG quantisation
        assert (a["alpha"] - b["alpha"]).abs().max() < 0.01
        assert torch.allclose(a["c2w"], b["c2w"], atol=1e-5) and torch.allclose(a["intrinsics"], b["intrinsics"])
    assert not torch.equal(memory[0]["images"], ProceduralMultiViewDataset(3, image_size=24, seed=2)[0]["images"])
    # a rerun keeps what is there; other settings in the same folder are refused
    stamp = (root / "heldout-00001" / "meta.json").stat().st_mtime_ns
    synthesize(root, 4, seed=2, split="heldout", size=24, progress=False)
    assert (root / "heldout-00001" / "meta.json").stat().st_mtime_ns == stamp and (root / "heldout-00003").is_dir()
    with pytest.raises(UserError, match="other settings"):
        synthesize(root, 4, seed=3, split="heldout", size=24, progress=False)


def test_data_synth_command(tmp_path, capsys):
    from ouroboros_core.cli import main

    assert main(["data", "synth", "-o", str(tmp_path / "d"), "--objects", "2", "--size", "16", "-q"]) == 0
    assert "2 train objects" in capsys.readouterr().out
    meta = json.loads((tmp_path / "d" / "train-00001" / "meta.json").read_text())
    assert len(meta["locations"]) == 16
    with Image.open(tmp_path / "d" / "train-00001" / "render_0003.png") as img:
        assert img.mode == "RGBA" and img.size == (16, 16)
    (tmp_path / "file").write_text("x")
    assert main(["data", "synth", "-o", str(tmp_path / "file"), "--objects", "2"]) == 2
    assert "is a file" in capsys.readouterr().err


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
