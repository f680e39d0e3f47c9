"""Reference reconstructor ``lgm``: LGM's Gaussian U-Net, optionally time-conditioned as in
Ouroboros3D (see :mod:`.config` for the options and presets).

This entry module must not import torch: it only declares the component; the model lives in
:mod:`.model` and is imported when a recipe builds it.
"""

from __future__ import annotations

from ouroboros_core import hookimpl
from ouroboros_core.components import ComponentSpec

from .config import PRESETS, LGMConfig

SPEC = ComponentSpec(
    kind="reconstructor",
    name="lgm",
    config=LGMConfig,
    factory="ouroboros_plugins.reconstructors.lgm.model:build",
    presets=PRESETS,
    description="LGM: 3D Gaussians from multi-view images (time-conditioned as in Ouroboros3D)",
    tiny_preset="tiny",
)


@hookimpl
def ouroboros3d_register_components(register) -> None:
    register(SPEC)


__all__ = ["SPEC", "LGMConfig", "PRESETS", "ouroboros3d_register_components"]
