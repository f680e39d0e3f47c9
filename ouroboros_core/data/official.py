"""Multi-view renders in the official Ouroboros3D layout (reference §6.6).

Layout::

    root/<object id>/meta.json      {"camera_angle_x": radians,
                                     "locations": [{"transform_matrix": 4x4 Blender c2w,
                                                    "frames": [{"name": "render_0000.png"}, ...]},
                                                   ...]}   (ordered along the orbit)
    root/<object id>/render_0000.png ...
    ids_file: one object id per line (optional; default: every folder with a meta.json)

Per object, like the official loader: roll the orbit by a start view (random, or 0), take
``num_views`` of its ``N`` views at ``linspace(0, N - 1, num_views)`` rounded down (N = 16,
8 views: 0, 2, ..., 12, 15, hence the 337.5 degree last view), convert Blender c2w to OpenCV and
canonicalise the poses relative to view 0: ``c2w_i <- S inv(c2w_0) c2w_i`` with
``S = [[1,0,0,0],[0,-1,0,0],[0,0,-1,d0],[0,0,0,1]]``, ``d0 = |centre of view 0|``, so view 0
becomes rotation diag(1, -1, -1) at (0, 0, d0) (the official 8-view orbit's first camera).
Images are resized (bicubic) and composited on the background; alpha is kept separately.

Decoding PNGs dominates reading this layout, so with ``cache_dir`` (recipe:
``trainer.data.cache_dir``; off by default) every view decoded and resized once is kept on disk
(:class:`DecodedViewCache`) and read back, instead of decoded again, in later epochs and runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..cameras import Cameras, focal_from_fov
from ..errors import InputError, RecipeError
from ..recipe import DataConfig

log = logging.getLogger(__name__)

#: the cached views' layout; change it whenever :func:`decode_rgba`'s output changes, so every
#: existing cache entry counts as stale
CACHE_FORMAT = "1"


def view_indices(num_orbit_views: int, num_views: int) -> list[int]:
    """The official sub-sampling of an orbit: ``linspace(0, N - 1, V)`` rounded down."""
    return np.linspace(0, num_orbit_views - 1, num_views).astype(np.int32).tolist()


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A per-item seed, so an item's randomness depends only on (seed, epoch, index)."""
    return ((seed * 1_000_003 + epoch) * 1_000_033 + index) % (2**63)


def canonicalize_poses(c2w: torch.Tensor) -> torch.Tensor:
    """Express OpenCV c2w ``(V, 4, 4)`` relative to view 0, placed at (0, 0, d0) looking down -z.

    Assumes view 0 looks at the origin (as every orbit render does), so the object stays at the
    origin and world y stays up.
    """
    d0 = torch.linalg.norm(c2w[0, :3, 3])
    S = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=c2w.dtype))
    S[2, 3] = d0
    return S @ torch.linalg.inv(c2w[0]) @ c2w


def decode_rgba(path: Path, size: int) -> np.ndarray:
    """An image file as RGBA ``uint8`` ``(S, S, 4)``, resized (bicubic) to ``size``: the costly
    part of reading a view, and what :class:`DecodedViewCache` keeps."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGBA")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BICUBIC)
            return np.array(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as err:
        raise _unreadable(path, err) from err


def _unreadable(path: Path, err: Exception) -> InputError:
    return InputError(f"cannot read the image: {err}", where=str(path), hint="re-render or remove this object from the ids file")


def composite(rgba: np.ndarray, background: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RGBA ``uint8`` ``(S, S, 4)`` as (rgb composited on ``background`` ``(3, S, S)``, alpha
    ``(1, S, S)``), floats in [0, 1]."""
    t = torch.from_numpy(rgba.astype(np.float32) / 255.0).permute(2, 0, 1)
    rgb, alpha = t[:3], t[3:]
    return rgb * alpha + background * (1 - alpha), alpha


class DecodedViewCache:
    """Decoded views on disk: one safetensors file per source image and size.

    ``<folder>/<object id>/<frame name>.<S>px.safetensors`` holds the RGBA ``uint8`` ``(S, S, 4)``
    that :func:`decode_rgba` gives, and in its metadata the key it was made from: the source's
    absolute path, modification time (ns) and size in bytes, and :data:`CACHE_FORMAT`. An entry
    whose key no longer matches (the source was re-rendered) or that cannot be read (truncated,
    garbage) is decoded again and replaced; entries are written atomically (a hidden temporary
    file renamed into place), so loader workers, processes and concurrent runs may share a
    folder. A folder that cannot be written is reported once per process and reading goes on
    uncached. Entries are never deleted here (other sizes, other datasets may still use them):
    removing the folder is always safe.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._write_failed = False

    def entry(self, object_id: str, name: str, size: int) -> Path:
        """Where the view ``name`` of ``object_id`` at ``size`` pixels is kept."""
        return self.folder / object_id / f"{name}.{size}px.safetensors"

    def load(self, source: Path, entry: Path, size: int) -> np.ndarray:
        """The decoded view of ``source`` at ``size``, from ``entry`` when it is current."""
        try:
            stat = source.stat()
        except OSError as err:
            raise _unreadable(source, err) from err
        key = {
            "format": CACHE_FORMAT, "source": str(source.resolve()), "mtime_ns": str(stat.st_mtime_ns),
            "bytes": str(stat.st_size), "size": str(size),
        }
        cached = self._read(entry, key, size)
        if cached is not None:
            return cached
        rgba = decode_rgba(source, size)
        self._write(entry, rgba, key)
        return rgba

    @staticmethod
    def _read(entry: Path, key: dict[str, str], size: int) -> np.ndarray | None:
        from safetensors import SafetensorError, safe_open

        if not entry.is_file():
            return None
        try:
            with safe_open(str(entry), framework="np") as f:
                if f.metadata() != key:
                    log.debug("cache entry is stale, decoding again: %s", entry)
                    return None
                rgba = f.get_tensor("rgba")
        except (SafetensorError, OSError, KeyError) as err:
            log.warning("cache entry cannot be read, decoding again: %s (%s)", entry, err)
            return None
        if rgba.shape != (size, size, 4) or rgba.dtype != np.uint8:
            log.warning("cache entry holds %s %s, decoding again: %s", rgba.dtype, rgba.shape, entry)
            return None
        return rgba

    def _write(self, entry: Path, rgba: np.ndarray, key: dict[str, str]) -> None:
        from safetensors.numpy import save_file

        from ..io.atomic import atomic_write

        try:
            with atomic_write(entry) as tmp:
                save_file({"rgba": rgba}, str(tmp), metadata=key)
        except OSError as err:
            if not self._write_failed:
                log.warning("cannot write the decoded-view cache, reading uncached: %s", err)
            self._write_failed = True


class OfficialMultiViewDataset(Dataset):
    """Objects rendered in the official layout; items as in :mod:`ouroboros_core.data`.

    The start view is drawn from a generator seeded by (``seed``, epoch, index), so the data of
    an epoch is reproducible (``set_epoch`` is called by the trainer). ``cache_dir``: keep
    decoded views there (:class:`DecodedViewCache`); ``None`` decodes every time.
    """

    def __init__(
        self,
        root: str | Path,
        ids_file: str | Path | None = None,
        num_views: int = 8,
        image_size: int = 512,
        orbit_views: int | None = 16,
        random_start_view: bool = True,
        num_objects: int | None = None,
        seed: int = 0,
        background: float = 1.0,
        cache_dir: str | Path | None = None,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError("the data folder does not exist", where=str(self.root), hint="set trainer.data.root to the folder holding <id>/meta.json")
        if ids_file is not None:
            ids_path = Path(ids_file)
            if not ids_path.is_file():
                raise InputError("the ids file does not exist", where=str(ids_path), hint="set trainer.data.ids_file to a text file with one object id per line")
            ids = [line.strip() for line in ids_path.read_text().splitlines() if line.strip()]
        else:
            ids = sorted(p.name for p in self.root.iterdir() if (p / "meta.json").is_file())
        if num_objects is not None:
            ids = ids[:num_objects]
        if not ids:
            raise InputError("no objects found", where=str(ids_file or self.root), hint="each object needs a folder <root>/<id>/meta.json")
        self.ids = ids
        self.num_views = num_views
        self.image_size = image_size
        self.orbit_views = orbit_views
        self.random_start_view = random_start_view
        self.seed = seed
        self.background = background
        self.cache = DecodedViewCache(cache_dir) if cache_dir is not None else None
        self.epoch = 0
        #: ids of objects found broken (per process: each loader worker keeps its own)
        self.skipped: set[str] = set()

    @classmethod
    def from_config(cls, config: DataConfig, seed: int = 0) -> "OfficialMultiViewDataset":
        if config.root is None:
            raise RecipeError("trainer.data.root is not set", hint="set it to the folder that holds <id>/meta.json")
        return cls(
            config.root, config.ids_file, config.num_views, config.image_size, config.orbit_views,
            config.random_start_view, config.num_objects, seed, cache_dir=config.cache_dir,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def _meta(self, object_id: str) -> dict[str, Any]:
        path = self.root / object_id / "meta.json"
        try:
            meta = json.loads(path.read_text())
            locations = meta["locations"]
            float(meta["camera_angle_x"])
        except FileNotFoundError as err:
            raise InputError("meta.json is missing", where=str(path), hint="remove the id from the ids file or render the object") from err
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise InputError(f"meta.json is malformed ({err!r})", where=str(path), hint="it needs camera_angle_x and locations[i].transform_matrix / frames[0].name") from err
        n = len(locations)
        if n < self.num_views or (self.orbit_views is not None and n != self.orbit_views):
            expected = self.orbit_views if self.orbit_views is not None else f">= {self.num_views}"
            raise InputError(f"meta.json has {n} locations, expected {expected}", where=str(path), hint="set trainer.data.orbit_views to the number of rendered views")
        return meta

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Object ``index``; a broken object (missing or corrupt view, bad meta.json) is logged
        once, counted in :attr:`skipped` and replaced by the next readable one."""
        first_error: InputError | None = None
        for offset in range(len(self.ids)):
            candidate = (index + offset) % len(self.ids)
            if self.ids[candidate] in self.skipped:
                continue
            try:
                return self._load(candidate)
            except InputError as err:
                first_error = first_error or err
                self.skipped.add(self.ids[candidate])
                log.warning("skipping a broken object (%d skipped so far): %s", len(self.skipped), err.format())
        raise InputError(
            f"none of the {len(self.ids)} objects can be read",
            where=str(self.root),
            hint=f"the first problem: {first_error.format() if first_error else 'unknown'}",
        )

    def _load(self, index: int) -> dict[str, Any]:
        object_id = self.ids[index]
        meta = self._meta(object_id)
        locations = meta["locations"]
        n = len(locations)
        start = 0
        if self.random_start_view:
            g = torch.Generator().manual_seed(item_seed(self.seed, self.epoch, index))
            start = int(torch.randint(n, (1,), generator=g))
        chosen = [locations[(start + i) % n] for i in view_indices(n, self.num_views)]

        images, alphas, c2w_gl = [], [], []
        for loc in chosen:
            name = loc["frames"][0]["name"]
            source = self.root / object_id / name
            if self.cache is None:
                rgba = decode_rgba(source, self.image_size)
            else:
                rgba = self.cache.load(source, self.cache.entry(object_id, name, self.image_size), self.image_size)
            rgb, alpha = composite(rgba, self.background)
            images.append(rgb)
            alphas.append(alpha)
            c2w_gl.append(torch.tensor(loc["transform_matrix"], dtype=torch.float64))
        c2w = canonicalize_poses(Cameras.from_opengl(torch.stack(c2w_gl)[None], torch.eye(3, dtype=torch.float64).expand(1, len(chosen), 3, 3)).c2w[0])
        f = focal_from_fov(float(meta["camera_angle_x"]))
        K = torch.tensor([[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]], dtype=torch.float32).expand(len(chosen), 3, 3).clone()
        return {
            "id": object_id,
            "images": torch.stack(images),
            "alpha": torch.stack(alphas),
            "c2w": c2w.float(),
            "intrinsics": K,
        }
