"""Feedback-encoder plugin (entry point ``feedback``): component ``adapter``.

One component serves every map kind: a recipe lists one ``adapter`` entry per map with
``config.map_kind`` (``rgb``, ``ccm``, ...); the sampler sums their features slot by slot.
This entry module must stay importable without torch; the encoder lives in
:mod:`ouroboros_plugins.feedback.adapter`.
"""

from __future__ import annotations

from ouroboros_core import hookimpl
from ouroboros_core.components import ComponentSpec

from .config import PRESETS, AdapterConfig

SPEC = ComponentSpec(
    kind="feedback",
    name="adapter",
    config=AdapterConfig,
    factory="ouroboros_plugins.feedback.adapter:build",
    presets=PRESETS,
    description="T2I-Adapter-style encoder of one feedback map (RGB, CCM, ...) into the generator's feedback slots",
    tiny_preset="tiny",
)


@hookimpl
def ouroboros3d_register_components(register) -> None:
    """Register the ``adapter`` feedback encoder."""
    register(SPEC)


__all__ = ["SPEC", "AdapterConfig", "ouroboros3d_register_components"]
