"""Component specifications: what a plugin declares about each component it provides.

This module must stay importable without torch: a plugin's entry module builds its
:class:`ComponentSpec` objects at import time, and listing plugins must be cheap. The heavy
module (the ``factory``) is named as a ``"module:attribute"`` string and imported only when a
recipe builds the component.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

ComponentKind = Literal["generator", "reconstructor", "feedback"]
COMPONENT_KINDS: tuple[str, ...] = ("generator", "reconstructor", "feedback")

# Which render outputs each feedback map kind is computed from (see ouroboros_core.maps).
MAP_REQUIREMENTS: dict[str, frozenset[str]] = {
    "rgb": frozenset({"rgb"}),
    "ccm": frozenset({"depth", "alpha"}),
    "alpha": frozenset({"alpha"}),
}


@dataclass(frozen=True)
class FeedbackSlot:
    """A place inside a generator where feedback features are added.

    ``stride`` is the downsampling factor relative to the generator's image resolution, so a
    slot is described independently of the image size (SVD at 512²: strides 8, 16, 32, 64).
    """

    name: str
    channels: int
    stride: int


class ComponentConfig(BaseModel):
    """Base of every component config: unknown keys are rejected, never silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    def weights_sources(self) -> list[str]:
        """Weights the config itself names (besides the recipe's ``weights:``), e.g. a base
        model, so that they are checked before anything is built."""
        return []


class GeneratorConfig(ComponentConfig):
    """What the framework needs to know about any multi-view generator config."""

    num_views: int = 8
    image_size: int = 512

    def feedback_slots(self) -> list[FeedbackSlot]:
        """The slots feedback encoders must match; empty means the generator takes none."""
        return []

    def decoder_mixes_views(self) -> bool:
        """Whether ``decode`` of a subset of views differs from decoding all views and then
        selecting (a temporal decoder that sees the views together); recipe validation warns
        about ``sampler.decode_only_input_views`` for such generators."""
        return False


class ReconstructorConfig(ComponentConfig):
    """What the framework needs to know about any reconstructor config."""

    #: indices of the generator views it reads; ``None`` means all of them.
    input_views: list[int] | None = None

    #: which render outputs its representation provides (subset of rgb, alpha, depth).
    renders: ClassVar[frozenset[str]] = frozenset({"rgb", "alpha", "depth"})
    #: "gaussians" or "mesh"
    representation: ClassVar[str] = "gaussians"


class FeedbackEncoderConfig(ComponentConfig):
    """What the framework needs to know about any feedback-encoder config."""

    map_kind: str = "rgb"

    def output_slots(self) -> list[FeedbackSlot]:
        """The (channels, stride) of each feature the encoder emits, in slot order."""
        return []


@dataclass(frozen=True)
class ComponentSpec:
    """One component a plugin provides.

    Attributes:
        kind: "generator", "reconstructor" or "feedback".
        name: what recipes write as ``type``.
        config: the pydantic model validating the recipe's ``config`` mapping.
        factory: ``"module:callable"`` (or a callable) taking the validated config and
            returning the ``nn.Module``. Imported lazily so listing plugins stays cheap.
        presets: named partial configs; a recipe's ``preset`` is applied under its ``config``.
        devices: device types the component supports ("cpu", "cuda", ...).
        description: one line for ``plugins list``.
        slot: ``True`` for a declared-but-unimplemented component. Recipes using it fail
            validation with ``slot_message``.
        tiny_preset: the preset the conformance kit runs on the CPU.
    """

    kind: ComponentKind
    name: str
    config: type[ComponentConfig]
    factory: str | Callable[[Any], Any]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    devices: tuple[str, ...] = ("cpu", "cuda")
    description: str = ""
    slot: bool = False
    slot_message: str = ""
    tiny_preset: str | None = "tiny"

    def resolve_factory(self) -> Callable[[Any], Any]:
        """Import and return the factory callable (this is where torch gets imported)."""
        if callable(self.factory):
            return self.factory
        module_name, _, attr = self.factory.partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr)

    def make_config(self, config: dict[str, Any] | None = None, preset: str | None = None) -> ComponentConfig:
        """Validate ``config`` on top of ``preset`` (a recipe's values win over the preset's)."""
        values: dict[str, Any] = {}
        if preset is not None:
            values.update(self.presets[preset])
        values.update(config or {})
        return self.config.model_validate(values)

    def build(self, config: dict[str, Any] | ComponentConfig | None = None, preset: str | None = None):
        """Build the module from a config (mapping or validated model)."""
        if not isinstance(config, ComponentConfig):
            config = self.make_config(config, preset)
        return self.resolve_factory()(config)
