"""Grids and per-view PNGs (against torchvision's layout), turntable cameras, mp4 and GIF output."""


import imageio.v3 as imageio
import numpy as np
import pytest
import torch
import torchvision

from ouroboros_core.cameras import OFFICIAL_FOV_DEG, OFFICIAL_RADIUS, Cameras
from ouroboros_core.io.grid import make_grid, save_grid, save_views
from ouroboros_core.io.video import turntable_cameras, write_video


def _views(count: int, height: int = 12, width: int = 10) -> torch.Tensor:
    return torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(count))


# ------------------------------------------------------------------ grids
def test_grid_of_eight_views_is_two_by_four():
    grid = make_grid(_views(8, 12, 10), columns=4, padding=2)
    assert grid.shape == (2 * 12 + 3 * 2, 4 * 10 + 5 * 2, 3) and grid.dtype == np.uint8


@pytest.mark.parametrize("count", [8, 5, 3])
@pytest.mark.parametrize("pad_value", [0.0, 1.0])
def test_grid_matches_torchvision_save_image_layout(count, pad_value):
    views = _views(count)
    expected = torchvision.utils.make_grid(views, nrow=4, padding=2, pad_value=pad_value)
    expected = expected.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(make_grid(views, columns=4, padding=2, pad_value=pad_value), expected)


def test_save_grid_reads_back(tmp_path):
    views = _views(8)
    path = save_grid(views, tmp_path / "views.png")
    np.testing.assert_array_equal(imageio.imread(path), make_grid(views))


def test_per_view_pngs_read_back(tmp_path):
    views = _views(8)
    paths = save_views(views, tmp_path / "views", prefix="view")
    assert [p.name for p in paths] == [f"view_{i:02d}.png" for i in range(8)]
    for view, path in zip(views, paths):
        back = imageio.imread(path).astype(np.float32) / 255
        assert back.shape == (12, 10, 3)
        np.testing.assert_allclose(back, view.permute(1, 2, 0).numpy(), atol=0.5 / 255 + 1e-6)
    assert sorted(p.name for p in (tmp_path / "views").iterdir()) == [p.name for p in paths]  # no temp files


# ------------------------------------------------------------------ turntable cameras
def _radius_elevation_azimuth_fov(cams: Cameras):
    centres = cams.centers[0].double()
    radius = centres.norm(dim=-1)
    elevation = torch.rad2deg(torch.asin(centres[:, 1] / radius))
    azimuth = torch.rad2deg(torch.atan2(centres[:, 0], centres[:, 2])) % 360
    return radius, elevation, azimuth, torch.rad2deg(cams.fov_y[0].double())


def test_turntable_matches_official_generation_cameras():
    official = Cameras.official(dtype=torch.float64)
    turntable = turntable_cameras(official, 12)
    assert turntable.c2w.shape == (1, 12, 4, 4)
    radius, elevation, azimuth, fov = _radius_elevation_azimuth_fov(turntable)
    np.testing.assert_allclose(radius, OFFICIAL_RADIUS, rtol=1e-7)
    np.testing.assert_allclose(elevation, 0.0, atol=1e-9)
    np.testing.assert_allclose(fov, OFFICIAL_FOV_DEG, rtol=1e-6)
    np.testing.assert_allclose(azimuth, np.arange(12) * 30.0, atol=1e-6)
    torch.testing.assert_close(turntable.c2w[0, 0], official.c2w[0, 0])  # frame 0 is the input view
    for frame in range(12):  # every camera looks at the origin
        forward = turntable.c2w[0, frame, :3, 2]
        torch.testing.assert_close(forward, -turntable.centers[0, frame] / OFFICIAL_RADIUS)


def test_turntable_copies_an_elevated_first_view_per_object():
    first = Cameras.orbit([50.0, 140.0], 25.0, radius=2.5, fov_deg=30.0, dtype=torch.float64)
    second = Cameras.orbit([-90.0, 0.0], -10.0, radius=1.2, fov_deg=60.0, dtype=torch.float64)
    turntable = turntable_cameras(Cameras.cat([first, second]), 4)
    assert turntable.c2w.shape == (2, 4, 4, 4)
    for b, (r, el, az, fov) in enumerate([(2.5, 25.0, 50.0, 30.0), (1.2, -10.0, 270.0, 60.0)]):
        one_object = Cameras(turntable.c2w[b : b + 1], turntable.intrinsics[b : b + 1])
        radius, elevation, azimuth, fovs = _radius_elevation_azimuth_fov(one_object)
        np.testing.assert_allclose(radius, r, rtol=1e-9)
        np.testing.assert_allclose(elevation, el, atol=1e-9)
        np.testing.assert_allclose(fovs, fov, rtol=1e-9)
        np.testing.assert_allclose(azimuth, (az + 90.0 * np.arange(4)) % 360, atol=1e-9)


# ------------------------------------------------------------------ video files
def _frames(count: int, height: int, width: int) -> np.ndarray:
    """Smooth frames (H.264 keeps them close) that differ from frame to frame."""
    y, x = np.mgrid[0:height, 0:width]
    frames = [np.stack([x / width, y / height, np.full_like(x, t / count, dtype=float)], -1) for t in range(count)]
    return np.stack(frames).astype(np.float32)


# imageio-ffmpeg's reader leaves its ffmpeg pipe for the garbage collector (a ResourceWarning
# from the reading side only; the writer closes everything).
decoding = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning", "ignore::ResourceWarning")


@decoding
def test_mp4_decodes_to_frame_count_and_size(tmp_path):
    frames = _frames(9, 48, 64)
    path = write_video(frames, tmp_path / "turntable.mp4", fps=30)
    assert path == tmp_path / "turntable.mp4"
    decoded = imageio.imread(path)  # imageio-ffmpeg decodes the whole clip
    assert decoded.shape == (9, 48, 64, 3)
    assert np.abs(decoded.astype(np.float32) / 255 - frames).mean() < 0.02
    assert [p.name for p in tmp_path.iterdir()] == ["turntable.mp4"]


@decoding
def test_odd_frame_size_is_padded_to_even(tmp_path):
    path = write_video(_frames(3, 31, 45), tmp_path / "odd.mp4", fps=10)
    assert imageio.imread(path).shape == (3, 32, 46, 3)


def test_gif_fallback_without_ffmpeg(tmp_path, monkeypatch):
    import imageio_ffmpeg

    def missing():
        raise RuntimeError("No ffmpeg exe could be found.")

    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", missing)
    frames = (_frames(6, 20, 30) * 255).round().astype(np.uint8)
    path = write_video(frames, tmp_path / "turntable.mp4", fps=20)
    assert path == tmp_path / "turntable.gif"
    assert [p.name for p in tmp_path.iterdir()] == ["turntable.gif"]
    decoded = imageio.imread(path, index=None)
    assert decoded.shape[:3] == (6, 20, 30)
    assert np.abs(decoded[..., :3].astype(np.float32) - frames).mean() < 8  # GIF palette quantisation


def test_ffmpeg_failing_mid_write_leaves_no_partial_mp4(tmp_path, monkeypatch):
    import imageio.v2 as imageio_v2

    class BrokenWriter:  # like a system ffmpeg without libx264: dies after writing a header
        def __init__(self, uri, **kwargs):
            self.uri = uri
            uri.write_bytes(b"partial mp4 header")

        def append_data(self, frame):
            raise OSError("[Errno 32] Broken pipe")

        def close(self):
            pass

    monkeypatch.setattr(imageio_v2, "get_writer", BrokenWriter)
    path = write_video(_frames(4, 16, 16), tmp_path / "turntable.mp4", fps=10)
    assert path == tmp_path / "turntable.gif"
    assert [p.name for p in tmp_path.iterdir()] == ["turntable.gif"]
    assert imageio.imread(path, index=None).shape[:3] == (4, 16, 16)
