"""3DGS .ply export/import, checked with plyfile as a second reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plyfile import PlyData

from ouroboros_core.errors import InputError, UserError
from ouroboros_core.gaussians import GaussianCloud

C0 = 0.28209479177387814
LAYOUT = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def random_cloud(batch: int = 2, n: int = 50, seed: int = 0) -> GaussianCloud:
    g = torch.Generator().manual_seed(seed)
    return GaussianCloud(
        means=torch.rand(batch, n, 3, generator=g) - 0.5,
        quats=torch.randn(batch, n, 4, generator=g) * 0.1,  # deliberately not unit: must be written as is
        scales=torch.rand(batch, n, 3, generator=g) * 0.05 + 1e-3,
        opacities=torch.rand(batch, n, generator=g) * 0.98 + 0.01,
        colors=torch.rand(batch, n, 3, generator=g),
    )


def test_layout_and_values_read_by_plyfile(tmp_path) -> None:
    cloud = random_cloud()
    path = cloud.save(tmp_path / "obj.ply", index=1, full_3dgs_layout=False)  # LGM's compact layout
    vertex = PlyData.read(str(path))["vertex"]
    assert list(vertex.data.dtype.names) == LAYOUT
    assert all(vertex.data.dtype[name] == np.dtype("<f4") for name in LAYOUT)
    col = lambda *names: np.stack([vertex[n] for n in names], -1)  # noqa: E731
    np.testing.assert_allclose(col("x", "y", "z"), cloud.means[1].numpy(), rtol=1e-6)
    np.testing.assert_allclose(col("f_dc_0", "f_dc_1", "f_dc_2"), (cloud.colors[1].numpy() - 0.5) / C0, rtol=1e-5, atol=1e-6)
    o = cloud.opacities[1].double().numpy()
    np.testing.assert_allclose(vertex["opacity"], np.log(o / (1 - o)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(col("scale_0", "scale_1", "scale_2"), np.log(cloud.scales[1].double().numpy() + 1e-8), rtol=1e-6)
    np.testing.assert_allclose(col("rot_0", "rot_1", "rot_2", "rot_3"), cloud.quats[1].numpy(), rtol=1e-6)


def test_full_3dgs_layout_adds_zero_normals_and_sh(tmp_path) -> None:
    path = random_cloud(batch=1, n=5).save(tmp_path / "full.ply")  # the default
    names = list(PlyData.read(str(path))["vertex"].data.dtype.names)
    assert names[:6] == ["x", "y", "z", "nx", "ny", "nz"]
    assert names[9:54] == [f"f_rest_{i}" for i in range(45)] and names[54:] == LAYOUT[6:]
    vertex = PlyData.read(str(path))["vertex"]
    assert np.all(vertex["nx"] == 0) and np.all(vertex["f_rest_44"] == 0)
    assert len(GaussianCloud.load_ply(path).means[0]) == 5


def test_round_trip_through_load_ply(tmp_path) -> None:
    cloud = random_cloud()
    loaded = GaussianCloud.load_ply(cloud.save(tmp_path / "a.ply", index=0), raw_quaternions=True)
    assert loaded.batch_size == 1 and loaded.num_gaussians == 50 and loaded.raw_quaternions
    for name in ("means", "quats", "scales", "opacities", "colors"):
        torch.testing.assert_close(getattr(loaded, name)[0], getattr(cloud, name)[0], rtol=1e-5, atol=1e-6)


def test_min_opacity_and_padding_are_not_written(tmp_path) -> None:
    cloud = random_cloud(batch=2, n=40)
    path = cloud.save(tmp_path / "p.ply", index=0, min_opacity=0.5)
    expected = cloud.opacities[0][cloud.opacities[0] >= 0.5]
    stored = torch.sigmoid(torch.from_numpy(np.asarray(PlyData.read(str(path))["vertex"]["opacity"])))
    torch.testing.assert_close(stored, expected, rtol=1e-5, atol=1e-6)
    # prune pads the emptier element with invisible Gaussians; they never reach the file
    pruned = cloud.prune(0.5)
    n0 = int((cloud.opacities[0] >= 0.5).sum())
    n1 = int((cloud.opacities[1] >= 0.5).sum())
    assert n0 != n1 and pruned.num_gaussians == max(n0, n1)
    for i, n in enumerate((n0, n1)):
        assert PlyData.read(str(pruned.save(tmp_path / f"e{i}.ply", index=i)))["vertex"].count == n


def test_write_is_atomic_and_overwrites(tmp_path) -> None:
    path = tmp_path / "sub" / "x.ply"
    random_cloud(n=10).save(path)
    random_cloud(n=7).save(path)
    assert PlyData.read(str(path))["vertex"].count == 7
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.ply"]  # no temporary left behind


def test_user_errors(tmp_path) -> None:
    with pytest.raises(UserError, match=r"\.ply"):
        random_cloud().save(tmp_path / "x.obj")
    with pytest.raises(InputError, match="no such file"):
        GaussianCloud.load_ply(tmp_path / "missing.ply")
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"not a ply at all")
    with pytest.raises(InputError, match="bad.ply"):
        GaussianCloud.load_ply(bad)
    # a point cloud .ply without Gaussian properties names what is missing
    from plyfile import PlyElement

    points = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(points, "vertex")]).write(str(tmp_path / "points.ply"))
    with pytest.raises(InputError, match="f_dc_0.*rot_3"):
        GaussianCloud.load_ply(tmp_path / "points.ply")
