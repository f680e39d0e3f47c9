"""Turntable videos: an orbit matching the generation cameras, and an mp4 (or GIF) writer.

The official code renders its turntable with LGM's default camera (radius 1.5, fovy 49.1°),
not the camera the views were generated with, so frame 0 does not match the input view. Here
the orbit copies radius, elevation and field of view from the first generation camera and
starts at its azimuth, so frame 0 is the input view.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras
from .atomic import atomic_write

logger = logging.getLogger(__name__)


def turntable_cameras(cameras: Cameras, num_frames: int) -> Cameras:
    """A full 360° orbit of ``num_frames`` cameras ``(B, num_frames)`` around the origin.

    For each object ``b``, radius, elevation and vertical field of view are those of
    ``cameras[b, 0]``; azimuths start at that camera's azimuth and step by 360°/num_frames
    (the last frame stops one step short of the first, so the video loops seamlessly). Like
    :meth:`Cameras.orbit`, the cameras look at the origin.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    orbits = []
    for b in range(cameras.batch_size):
        x, y, z = (float(v) for v in cameras.centers[b, 0].double())
        radius = math.sqrt(x * x + y * y + z * z)
        elevation = math.degrees(math.asin(max(-1.0, min(1.0, y / radius))))
        azimuth = math.degrees(math.atan2(x, z))  # from +z towards +x, as Cameras.orbit
        fov = math.degrees(float(cameras.fov_y[b, 0]))
        azimuths = [azimuth + 360.0 * k / num_frames for k in range(num_frames)]
        orbits.append(
            Cameras.orbit(azimuths, elevation, radius, fov, dtype=cameras.c2w.dtype, device=cameras.device)
        )
    return Cameras.cat(orbits, dim=0)


def frames_to_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """Frames ``(T, H, W, 3)`` as uint8, or float in [0, 1] (rounded to nearest), to uint8."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def ffmpeg_available() -> bool:
    """Whether imageio-ffmpeg is installed and finds an ffmpeg binary."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError, OSError):
        return False
    return True


def write_video(frames: torch.Tensor | np.ndarray, path: str | os.PathLike, fps: float = 30.0) -> Path:
    """Write ``frames`` ``(T, H, W, 3)`` as an H.264 mp4 at ``path``; returns the path written.

    A ``path`` ending in ``.gif`` asks for a GIF directly. Without ffmpeg (imageio-ffmpeg
    missing, or its binary not found or failing) the video is written as a looping GIF next to
    it, ``path`` with suffix ``.gif``, and that path is returned. Odd frame sizes are padded
    by one edge pixel in the mp4 (yuv420p needs even sizes).
    """
    pixels = frames_to_uint8(frames)
    path = Path(path)
    if path.suffix.lower() == ".gif":
        return _write_gif(pixels, path, fps)
    if ffmpeg_available():
        try:
            return _write_mp4(pixels, path, fps)
        except (RuntimeError, OSError) as err:  # e.g. a system ffmpeg without libx264
            logger.warning("writing %s with ffmpeg failed (%s); writing a GIF instead", path, err)
    else:
        logger.warning("ffmpeg is not available (install imageio-ffmpeg); writing a GIF instead of %s", path)
    return _write_gif(pixels, path.with_suffix(".gif"), fps)


def _write_mp4(pixels: np.ndarray, path: Path, fps: float) -> Path:
    import imageio.v2 as imageio

    _, height, width, _ = pixels.shape
    pixels = np.pad(pixels, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    with atomic_write(path) as tmp:
        writer = imageio.get_writer(
            tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p",
            quality=8, macro_block_size=1,
        )
        try:
            for frame in pixels:
                writer.append_data(frame)
        finally:
            writer.close()
    return path


def _write_gif(pixels: np.ndarray, path: Path, fps: float) -> Path:
    import imageio.v3 as iio

    with atomic_write(path) as tmp:
        # Pillow's GIF writer: duration per frame in milliseconds, loop=0 repeats forever.
        iio.imwrite(tmp, pixels, extension=".gif", duration=1000.0 / fps, loop=0)
    return path
