"""Write procedural objects to disk in the official Ouroboros3D layout (``ouroboros3d data synth``).

Training then reads files through :class:`~ouroboros_core.data.official.OfficialMultiViewDataset`
(fast, any number of loader workers, and the official reader exercised on real files)::

    <root>/<split>-<index>/meta.json            camera_angle_x + 16 orbit locations (Blender c2w)
    <root>/<split>-<index>/render_0000.png ...  RGBA, straight alpha
    <root>/synth.json                           how the folder was made (seed, split, size, count)

Each object folder is written under a hidden name and renamed when complete, so an
interrupted run leaves no half-written object, and a rerun skips the objects already there.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..cameras import OFFICIAL_FOV_DEG, OFFICIAL_RADIUS, Cameras
from ..errors import UserError
from .procedural import SPLITS, object_id, random_scene, render_scene, scene_seed

log = logging.getLogger(__name__)

ORBIT_VIEWS = 16


def orbit(num_views: int = ORBIT_VIEWS) -> Cameras:
    """The full rendered orbit: ``num_views`` azimuths from 0, elevation 0, official radius and fov."""
    return Cameras.orbit([360.0 * i / num_views for i in range(num_views)], 0.0, OFFICIAL_RADIUS, OFFICIAL_FOV_DEG)


def write_object(root: Path, seed: int, split: str, index: int, size: int, supersample: int = 2) -> Path:
    """Render object ``index`` of ``split`` on the full orbit and write its folder atomically."""
    from PIL import Image

    name = object_id(split, index)
    target = root / name
    if (target / "meta.json").is_file():
        return target
    scene = random_scene(torch.Generator().manual_seed(scene_seed(seed, split, index)))
    cameras = orbit()
    rgb, alpha, _ = render_scene(scene, cameras, size, size, background=0.0, supersample=supersample)
    # rendered on black: rgb = colour * alpha, so the straight colour is rgb / alpha
    straight = torch.where(alpha > 0, rgb / alpha.clamp_min(1e-6), torch.zeros_like(rgb)).clamp(0, 1)
    rgba = torch.cat([straight, alpha], 1).permute(0, 2, 3, 1).numpy()
    pixels = (rgba * 255.0 + 0.5).astype(np.uint8)
    tmp = root / f".{name}.partial-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    c2w_gl = cameras.to_opengl()[0]
    locations = []
    for view in range(len(pixels)):
        file = f"render_{view:04d}.png"
        Image.fromarray(pixels[view], "RGBA").save(tmp / file)
        locations.append({"index": view, "transform_matrix": c2w_gl[view].tolist(), "frames": [{"name": file}]})
    meta = {"camera_angle_x": float(np.deg2rad(OFFICIAL_FOV_DEG)), "locations": locations}
    (tmp / "meta.json").write_text(json.dumps(meta))
    tmp.rename(target)
    return target


def _write_range(args: tuple[str, int, str, list[int], int]) -> int:
    root, seed, split, indices, size = args
    torch.set_num_threads(1)
    for index in indices:
        write_object(Path(root), seed, split, index, size)
    return len(indices)


def synthesize(root: str | Path, num_objects: int, seed: int = 0, split: str = "train", size: int = 64, workers: int = 1, progress: bool = True) -> Path:
    """Write objects ``0 .. num_objects - 1`` of ``split`` under ``root`` (skipping finished ones)."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}", hint=f"use one of {', '.join(SPLITS)}")
    if num_objects < 1:
        raise UserError(f"--objects must be at least 1, got {num_objects}")
    if size < 8:
        raise UserError(f"--size must be at least 8 pixels, got {size}")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError("the output path is a file", where=str(root), hint="give a folder for the dataset")
    root.mkdir(parents=True, exist_ok=True)
    info_file = root / "synth.json"
    info = {"generator": "ouroboros3d data synth", "seed": seed, "split": split, "size": size, "orbit_views": ORBIT_VIEWS}
    if info_file.is_file():
        old = json.loads(info_file.read_text())
        if {k: old.get(k) for k in info} != info:
            raise UserError(
                f"the folder already holds a dataset made with other settings ({ {k: old.get(k) for k in info} })",
                where=str(root),
                hint="use another folder, or the same --seed/--split/--size",
            )
    todo = [i for i in range(num_objects) if not (root / object_id(split, i) / "meta.json").is_file()]
    chunks = [todo[k :: max(1, workers)] for k in range(max(1, workers))]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_objects, initial=num_objects - len(todo), desc=f"synth {split}")
    if workers <= 1:
        for index in todo:
            write_object(root, seed, split, index, size)
            if bar is not None:
                bar.update(1)
    else:
        pieces = [(str(root), seed, split, chunk[k : k + 8], size) for chunk in chunks for k in range(0, len(chunk), 8)]
        with ProcessPoolExecutor(workers) as pool:
            for done in pool.map(_write_range, pieces):
                if bar is not None:
                    bar.update(done)
    if bar is not None:
        bar.close()
    total = max(num_objects, int(json.loads(info_file.read_text()).get("objects", 0)) if info_file.is_file() else 0)
    info_file.write_text(json.dumps({**info, "objects": total}, indent=1))
    return root
