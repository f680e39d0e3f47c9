"""Weight sources of the SVD generator.

Accepted by :func:`load_generator_weights` (a recipe's ``weights:``):

- a diffusers folder with ``unet/``, ``vae/``, ``image_encoder/`` (``feature_extractor/`` is
  not needed: CLIP's normalisation constants are in the config), optionally with the
  ``camera.safetensors`` that :func:`save_generator` writes; the Plücker MLPs keep their
  initial values when it is absent (the plain SVD base); an ``image_conditioning: tokens``
  model also needs its ``image_tokens.safetensors``;
- a bare hub id ``owner/name`` of such a diffusers repository
  (``stabilityai/stable-video-diffusion-img2vid``), with the config's ``variant``;
- a checkpoint file (local, or ``owner/name:file`` on the hub): our own flat state dict or
  the published Ouroboros3D ``mv_model_unet.pth``. Its ``cond_encoder.{0,1}.*`` keys belong
  to the RGB / CCM feedback encoders and are dropped here (the ``adapter`` feedback plugin
  reads the same file and keeps only its own prefix). When the file has no VAE/CLIP keys,
  those come from ``config.base_weights``, which is loaded first.

Every load is strict: a missing, unexpected or mis-shaped key is a
:class:`~ouroboros_core.errors.WeightsError` naming it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import torch
from torch import nn

from ouroboros_core.errors import WeightsError
from ouroboros_core.weights import load_strict, parse_hub_id, read_state_dict, resolve_weights

if TYPE_CHECKING:
    from .model import SVDGenerator

#: the published checkpoint's file name (huanngzh/Ouroboros3D-SVD-LGM)
OFFICIAL_FILENAME = "mv_model_unet.pth"
#: official MVModel prefix → our prefix (None: not the generator's; the feedback encoders'
#: ``cond_encoder.0.`` = RGB and ``cond_encoder.1.`` = CCM)
OFFICIAL_KEY_MAP: dict[str, str | None] = {
    "unet.": "unet.",
    "down_plucker.": "down_plucker.",
    "mid_plucker.": "mid_plucker.",
    "up_plucker.": "up_plucker.",
    "cond_encoder.": None,
}
#: module groups that a checkpoint may leave to the base model, all or nothing
BASE_GROUPS = ("vae.", "image_encoder.")
CAMERA_FILENAME = "camera.safetensors"
TOKENS_FILENAME = "image_tokens.safetensors"
CONFIG_FILENAME = "ouroboros_svd.json"


def to_generator_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply :data:`OFFICIAL_KEY_MAP`; keys under other prefixes are kept as they are (our
    own layout), so a strict load reports anything foreign."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        prefix = next((p for p in OFFICIAL_KEY_MAP if key.startswith(p)), None)
        if prefix is None:
            out[key] = value
        elif OFFICIAL_KEY_MAP[prefix] is not None:
            out[OFFICIAL_KEY_MAP[prefix] + key[len(prefix):]] = value
    return out


def base_keys_missing(module_keys: Iterable[str], file_keys: Iterable[str]) -> set[str]:
    """Module keys of each :data:`BASE_GROUPS` group of which the file holds no key at all."""
    file_keys = list(file_keys)
    absent = [g for g in BASE_GROUPS if not any(k.startswith(g) for k in file_keys)]
    return {k for k in module_keys if k.startswith(tuple(absent))} if absent else set()


def official_state_dict(generator: "SVDGenerator", encoders: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    """The official ``mv_model_unet.pth`` layout of a generator and its feedback encoders
    (in the order of the official ``cond`` list: RGB, CCM). Encoders must have the official
    structure (no output projections)."""
    sd = {k: v for k, v in generator.state_dict().items() if not k.startswith(BASE_GROUPS)}
    for index, encoder in enumerate(encoders):
        sd.update({f"cond_encoder.{index}.{k}": v for k, v in encoder.state_dict().items()})
    return sd


# ---------------------------------------------------------------------- loading
def _is_repo_id(text: str) -> bool:
    """A bare ``owner/name`` (a diffusers repository), not ``owner/name:file`` nor a path."""
    hub = parse_hub_id(text)
    return hub is not None and hub[1] is None


def load_generator_weights(generator: "SVDGenerator", source: str | os.PathLike) -> None:
    """Load ``source`` into ``generator`` (see module docstring for what it may be)."""
    text = str(source).strip()
    path = Path(text).expanduser()
    if path.is_dir() and (path / "unet").is_dir():
        _load_diffusers(generator, str(path), local=True)
        _load_camera_file(generator, path / CAMERA_FILENAME)
        _load_tokens_file(generator, path / TOKENS_FILENAME)
        return
    if not path.exists() and _is_repo_id(text):
        _load_diffusers(generator, text, local=False)
        return
    file = resolve_weights(text, default_filename=OFFICIAL_FILENAME)
    state_dict = generator.convert_state_dict(read_state_dict(file))
    allowed = generator.allowed_missing(state_dict)
    if allowed:
        base = generator.config.base_weights
        groups = sorted({k.split(".", 1)[0] for k in allowed})
        if base is None:
            raise WeightsError(
                f"{file} holds no {'/'.join(groups)} weights",
                hint="set the generator's config.base_weights to the SVD base "
                "('stabilityai/stable-video-diffusion-img2vid' or a local diffusers folder)",
            )
        _load_base(generator, base)
    load_strict(generator, state_dict, allow_missing=allowed, source=file)


def _load_base(generator: "SVDGenerator", base: str) -> None:
    path = Path(base).expanduser()
    if path.is_dir() and (path / "unet").is_dir():
        _load_diffusers(generator, str(path), local=True)
    elif not path.exists() and _is_repo_id(base):
        _load_diffusers(generator, base, local=False)
    else:
        raise WeightsError(
            f"base_weights {base!r} is not a diffusers folder (with unet/, vae/, image_encoder/) or hub id",
            hint="point config.base_weights at the SVD img2vid folder or 'stabilityai/stable-video-diffusion-img2vid'",
        )


def _variant(folder: Path, subfolder: str, variant: str | None) -> str | None:
    """The configured variant if a local subfolder has files of it, else None (full files)."""
    if variant is None:
        return None
    return variant if any(f".{variant}." in p.name for p in (folder / subfolder).glob("*")) else None


def _load_diffusers(generator: "SVDGenerator", source: str, local: bool) -> None:
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionModelWithProjection

    parts: list[tuple[str, type, nn.Module]] = [("unet", UNetSpatioTemporalConditionModel, generator.unet)]
    if generator.vae is not None:
        parts.append(("vae", AutoencoderKLTemporalDecoder, generator.vae))
    if generator.image_encoder is not None:
        parts.append(("image_encoder", CLIPVisionModelWithProjection, generator.image_encoder))
    for subfolder, cls, module in parts:
        variant = _variant(Path(source), subfolder, generator.config.variant) if local else generator.config.variant
        where = f"{source}/{subfolder}"
        try:
            loaded = cls.from_pretrained(source, subfolder=subfolder, variant=variant)
        except (OSError, ValueError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            hint = (
                "check that the folder has unet/, vae/ and image_encoder/ subfolders"
                if local
                else f"download it on a machine with internet (`hf download {source}`) and set weights: to the local folder"
            )
            raise WeightsError(f"cannot load {cls.__name__} from {where}: {reason}", hint=hint) from err
        load_strict(module, loaded.state_dict(), source=where)
        del loaded


def _camera_modules(generator: "SVDGenerator") -> nn.ModuleDict:
    return nn.ModuleDict(
        {"down_plucker": generator.down_plucker, "mid_plucker": generator.mid_plucker, "up_plucker": generator.up_plucker}
    )


def _load_camera_file(generator: "SVDGenerator", path: Path) -> None:
    if not path.is_file():
        return  # a plain SVD base: the Plücker MLPs keep their initialisation
    if not generator.config.plucker:
        raise WeightsError(f"{path} holds Plücker MLP weights but the generator has plucker: false", hint="set plucker: true or remove the file")
    load_strict(_camera_modules(generator), read_state_dict(path), source=path)


def _load_tokens_file(generator: "SVDGenerator", path: Path) -> None:
    """The image-token projection of an ``image_conditioning: tokens`` model (its own file:
    diffusers' folders have no place for it)."""
    if generator.image_tokens is None:
        if path.is_file():
            raise WeightsError(
                f"{path} holds image-token weights but the generator's image_conditioning is "
                f"{generator.config.image_conditioning!r}",
                hint="set image_conditioning: tokens or remove the file",
            )
        return
    if not path.is_file():
        raise WeightsError(f"{path} is missing: the generator's image_conditioning is 'tokens'", hint="save the model with save_generator")
    load_strict(generator.image_tokens, read_state_dict(path), source=path)


# ---------------------------------------------------------------------- saving
def save_generator(generator: "SVDGenerator", folder: str | os.PathLike) -> Path:
    """Write ``unet/``, ``vae/``, ``image_encoder/`` (diffusers/transformers layout),
    ``camera.safetensors``, ``image_tokens.safetensors`` (tokens conditioning only) and the
    config as JSON.

    Written into a temporary sibling folder and renamed at the end, so an interrupted save
    never leaves a folder that looks complete. Refuses to overwrite a non-empty folder.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise WeightsError(f"{folder} already exists and is not empty", hint="choose a new folder or delete it first")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    generator.unet.save_pretrained(tmp / "unet")
    if generator.vae is not None:
        generator.vae.save_pretrained(tmp / "vae")
    if generator.image_encoder is not None:
        generator.image_encoder.save_pretrained(tmp / "image_encoder")
    if generator.config.plucker:
        tensors = {k: v.detach().contiguous() for k, v in _camera_modules(generator).state_dict().items()}
        save_file(tensors, str(tmp / CAMERA_FILENAME))
    if generator.image_tokens is not None:
        tensors = {k: v.detach().contiguous() for k, v in generator.image_tokens.state_dict().items()}
        save_file(tensors, str(tmp / TOKENS_FILENAME))
    (tmp / CONFIG_FILENAME).write_text(generator.config.model_dump_json(indent=1))
    if folder.exists():
        folder.rmdir()
    os.replace(tmp, folder)
    return folder
