"""Which published LGM checkpoints exist and how their keys relate to this module.

Torch-free facts about files: the key names of the time layers Ouroboros3D added to LGM, and
the rotation behaviour each published file was trained with (the files have identical keys,
so only their names tell them apart).
"""

from __future__ import annotations

from typing import Iterable

#: published file name -> the ``rotation`` setting it was trained with
TRAINED_ROTATION = {
    "model_fp16_fixrot.safetensors": "per_gaussian",  # LGM after its rotation fix
    "model_fp16.safetensors": "official",  # LGM before the fix (quaternions normalised across Gaussians)
    "recon_model.pth": "official",  # Ouroboros3D, fine-tuned from model_fp16.safetensors
}


def default_filename(time_conditioned: bool, rotation: str) -> str:
    """The published file a folder or hub repository is searched for, given the config:
    the one trained with this rotation (and, for the pre-fix rotation, these time layers)."""
    if rotation == "per_gaussian":
        return "model_fp16_fixrot.safetensors"  # ashawkey/LGM
    return "recon_model.pth" if time_conditioned else "model_fp16.safetensors"  # Ouroboros3D / old LGM


def is_time_key(key: str) -> bool:
    """True for the parameters Ouroboros3D added to LGM (time MLP and per-ResBlock projections)."""
    return key.startswith("unet.time_embed.") or ".emb_layers." in key


def has_time_layers(keys: Iterable[str]) -> bool:
    return any(is_time_key(k) for k in keys)
