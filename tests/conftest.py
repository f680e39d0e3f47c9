"""Shared fixtures: torch-free toy components and isolated plugin registries.

Tests of the registry, recipes and CLI must not depend on the reference plugins (or on what
happens to be installed), so they build a :class:`Registry` that holds only toy plugins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from ouroboros_core import hookimpl
from ouroboros_core.components import (
    ComponentSpec,
    FeedbackEncoderConfig,
    FeedbackSlot,
    GeneratorConfig,
    ReconstructorConfig,
)
from ouroboros_core.registry import Registry


class ToyGeneratorConfig(GeneratorConfig):
    num_views: int = 4
    image_size: int = 32
    #: channels of each feedback slot; slot i has stride 2**i
    slot_channels: list[int] = [3]

    def feedback_slots(self) -> list[FeedbackSlot]:
        return [FeedbackSlot(f"s{i}", c, 2**i) for i, c in enumerate(self.slot_channels)]


class ToyReconstructorConfig(ReconstructorConfig):
    radius: float = 0.5


class RgbOnlyReconstructorConfig(ReconstructorConfig):
    renders: ClassVar[frozenset[str]] = frozenset({"rgb"})


class ToyEncoderConfig(FeedbackEncoderConfig):
    channels: list[int] = [3]

    def output_slots(self) -> list[FeedbackSlot]:
        return [FeedbackSlot(f"s{i}", c, 2**i) for i, c in enumerate(self.channels)]


def _identity(config: Any) -> Any:
    return config


def toy_specs() -> list[ComponentSpec]:
    """One component of each kind (plus a slot and an rgb-only reconstructor)."""
    return [
        ComponentSpec(
            "generator",
            "toy-gen",
            ToyGeneratorConfig,
            _identity,
            presets={"tiny": {"image_size": 16}, "wide": {"num_views": 8}},
        ),
        ComponentSpec("reconstructor", "toy-recon", ToyReconstructorConfig, _identity, presets={"tiny": {}}),
        ComponentSpec("reconstructor", "rgb-recon", RgbOnlyReconstructorConfig, _identity, devices=("cpu",)),
        ComponentSpec(
            "reconstructor",
            "toy-mesh",
            ReconstructorConfig,
            _identity,
            slot=True,
            slot_message="mesh output is planned; use toy-recon for now",
        ),
        ComponentSpec("feedback", "toy-enc", ToyEncoderConfig, _identity, presets={"tiny": {}}),
    ]


class ToyPlugin:
    """A plugin object registering given specs and recipe paths."""

    def __init__(self, specs: list[ComponentSpec] = (), recipes: list[Path] = ()) -> None:
        self.specs = list(specs)
        self.recipe_paths = list(recipes)

    @hookimpl
    def ouroboros3d_register_components(self, register):
        for spec in self.specs:
            register(spec)

    @hookimpl
    def ouroboros3d_register_recipes(self, register):
        for path in self.recipe_paths:
            register(path)


@pytest.fixture
def toy_plugin_cls() -> type[ToyPlugin]:
    return ToyPlugin


@pytest.fixture
def toy_registry() -> Registry:
    """A registry holding only the toy components (no entry points, nothing disabled)."""
    registry = Registry(load_entry_points=False, disabled=())
    registry.add_plugin(ToyPlugin(toy_specs()), name="toys", distribution="toy-dist", version="1.0")
    return registry
