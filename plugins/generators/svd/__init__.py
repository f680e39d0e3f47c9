"""SVD multi-view generator plugin (entry point ``svd``).

This entry module only declares the component; it must stay importable without torch. The
model lives in :mod:`ouroboros_plugins.generators.svd.model` and is imported when a recipe
builds the generator.
"""

from __future__ import annotations

from ouroboros_core import hookimpl
from ouroboros_core.components import ComponentSpec

from .config import PRESETS, SVDGeneratorConfig

SPEC = ComponentSpec(
    kind="generator",
    name="svd",
    config=SVDGeneratorConfig,
    factory="ouroboros_plugins.generators.svd.model:build",
    presets=PRESETS,
    description="Stable Video Diffusion img2vid as an N-view generator with Plücker cameras and feedback slots",
    tiny_preset="tiny",
)


@hookimpl
def ouroboros3d_register_components(register) -> None:
    """Register the ``svd`` generator."""
    register(SPEC)


__all__ = ["SPEC", "SVDGeneratorConfig", "ouroboros3d_register_components"]
