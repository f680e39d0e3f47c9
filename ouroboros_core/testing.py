"""Conformance checks any plugin's tests can call (ours and third-party ones alike).

    from ouroboros_core.testing import check_component, check_plugin
    def test_my_reconstructor():
        check_component(MY_SPEC)
    def test_my_plugin():
        check_plugin(my_plugin_module)     # its hooks run; registered recipe files exist

:func:`check_component` runs every check that applies to the spec's kind; the functions it
calls can be used one by one so a failure points at the broken part. Every failure is an
``AssertionError`` whose message names the component and what it did wrong. Components are
built from the spec's ``tiny_preset`` (or a given preset) and run on the CPU with small inputs.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import yaml

from .cameras import Cameras
from .components import (
    COMPONENT_KINDS,
    ComponentConfig,
    ComponentSpec,
    FeedbackEncoderConfig,
    GeneratorConfig,
    ReconstructorConfig,
)
from .interfaces import (
    FeedbackEncoder,
    GenerationContext,
    MultiViewGenerator,
    Reconstructor,
    RenderOutput,
    Representation,
)

CONFIG_BASES: dict[str, type[ComponentConfig]] = {
    "generator": GeneratorConfig,
    "reconstructor": ReconstructorConfig,
    "feedback": FeedbackEncoderConfig,
}
MODULE_BASES: dict[str, type] = {
    "generator": MultiViewGenerator,
    "reconstructor": Reconstructor,
    "feedback": FeedbackEncoder,
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def _who(spec: ComponentSpec) -> str:
    return f"{spec.kind} '{spec.name}'"


def _expect(condition: bool, spec: ComponentSpec, message: str) -> None:
    if not condition:
        raise AssertionError(f"{_who(spec)}: {message}")


def _shape(spec: ComponentSpec, what: str, tensor: Any, expected: tuple[int, ...]) -> None:
    _expect(torch.is_tensor(tensor), spec, f"{what} must be a tensor, got {type(tensor).__name__}")
    _expect(tuple(tensor.shape) == tuple(expected), spec, f"{what} has shape {tuple(tensor.shape)}, expected {tuple(expected)}")
    _expect(bool(torch.isfinite(tensor).all()), spec, f"{what} contains NaN or inf")


# ---------------------------------------------------------------------- spec and config
def check_spec(spec: ComponentSpec) -> None:
    """Name, kind, config base class, presets and an importable callable factory."""
    _expect(isinstance(spec, ComponentSpec), spec, f"expected a ComponentSpec, got {type(spec).__name__}")
    _expect(spec.kind in COMPONENT_KINDS, spec, f"kind must be one of {COMPONENT_KINDS}")
    _expect(bool(_NAME.match(spec.name)), spec, "name must be lowercase letters, digits, '-', '_' or '.' (recipes write it)")
    base = CONFIG_BASES[spec.kind]
    _expect(
        isinstance(spec.config, type) and issubclass(spec.config, base),
        spec,
        f"config must be a subclass of ouroboros_core.components.{base.__name__}",
    )
    _expect(bool(spec.devices) and all(isinstance(d, str) for d in spec.devices), spec, "devices must name at least one device type")
    if spec.slot:
        _expect(bool(spec.slot_message), spec, "a slot needs a slot_message telling users what to use instead")
        return
    _expect(
        spec.tiny_preset is None or spec.tiny_preset in spec.presets,
        spec,
        f"tiny_preset {spec.tiny_preset!r} is not one of its presets {sorted(spec.presets)}",
    )
    try:
        factory = spec.resolve_factory()
    except Exception as exc:
        raise AssertionError(f"{_who(spec)}: factory {spec.factory!r} cannot be imported: {type(exc).__name__}: {exc}") from exc
    _expect(callable(factory), spec, f"factory {spec.factory!r} is not callable")


def check_config_roundtrip(spec: ComponentSpec, preset: str | None = None) -> None:
    """The validated config survives YAML (what a saved recipe stores) unchanged."""
    try:
        config = spec.make_config(None, preset)
    except Exception as exc:
        raise AssertionError(f"{_who(spec)}: config (preset {preset!r}) does not validate: {exc}") from exc
    text = yaml.safe_dump(config.model_dump(mode="json"))
    again = spec.config.model_validate(yaml.safe_load(text))
    _expect(again == config, spec, f"config changes through YAML (preset {preset!r}):\n{config!r}\nbecame\n{again!r}")


def check_presets(spec: ComponentSpec) -> None:
    """Every preset validates and round-trips through YAML."""
    for name in spec.presets:
        check_config_roundtrip(spec, name)


# ---------------------------------------------------------------------- running on the CPU
def build_tiny(spec: ComponentSpec, preset: str | None = None) -> tuple[Any, ComponentConfig]:
    """Build the component on the CPU in eval mode from ``preset`` (default: its tiny preset)."""
    preset = preset if preset is not None else spec.tiny_preset
    config = spec.make_config(None, preset)
    module = spec.build(config)
    base = MODULE_BASES[spec.kind]
    _expect(isinstance(module, base), spec, f"factory returned {type(module).__name__}, not a {base.__name__}")
    _expect(module.config == config, spec, "the built module's .config is not the config it was built from")
    return module.to("cpu").eval(), config


def orbit(num_views: int, batch_size: int = 1) -> Cameras:
    """Evenly spaced cameras around the origin (elevation 0), for checks and tests."""
    return Cameras.orbit([360.0 * i / num_views for i in range(num_views)], 0.0, batch_size=batch_size)


@torch.no_grad()
def check_generator(spec: ComponentSpec, preset: str | None = None) -> None:
    """prepare, initial_noise, denoise (with and without zero feedback), decode and encode."""
    gen, config = build_tiny(spec, preset)
    V, S = config.num_views, config.image_size
    rng = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, S, S, generator=rng)
    context = gen.prepare(image, orbit(V))
    _expect(isinstance(context, GenerationContext), spec, f"prepare returned {type(context).__name__}, not a GenerationContext")
    shape = tuple(context.latent_shape)
    _expect(len(shape) == 5 and shape[:2] == (1, V), spec, f"latent_shape {shape} is not (1, {V}, C, h, w)")
    _expect(context.batch_size == 1, spec, f"context.batch_size is {context.batch_size} for a batch of 1")

    noise = gen.initial_noise(context, torch.Generator().manual_seed(0))
    _shape(spec, "initial_noise", noise, shape)
    sigma = torch.tensor([2.0])
    x = noise * math.sqrt(1.0 + float(sigma) ** 2)
    x0 = gen.denoise(x, sigma, context)
    _shape(spec, "denoise output", x0, shape)

    slots = gen.feedback_slots
    _expect(
        [(s.channels, s.stride) for s in slots] == [(s.channels, s.stride) for s in config.feedback_slots()],
        spec,
        "feedback_slots of the module differ from its config's feedback_slots()",
    )
    if slots:
        zeros = [torch.zeros(1, V, s.channels, S // s.stride, S // s.stride) for s in slots]
        with_zeros = gen.denoise(x, sigma, context, feedback=zeros)
        _shape(spec, "denoise output with feedback", with_zeros, shape)
        _expect(
            torch.allclose(with_zeros, x0, atol=1e-5, rtol=1e-4),
            spec,
            "zero feedback features change the prediction; features must be added to the slots",
        )

    images = gen.decode(x0)
    _shape(spec, "decode output", images, (1, V, 3, S, S))
    some = [0, V - 1] if V > 1 else [0]
    _shape(spec, "decode output for a subset of views", gen.decode(x0[:, some]), (1, len(some), 3, S, S))
    latents = gen.encode(images.clamp(0, 1))
    _shape(spec, "encode output", latents, shape)


@torch.no_grad()
def check_reconstructor(
    spec: ComponentSpec,
    preset: str | None = None,
    image_size: int | None = None,
    render_size: int = 32,
    num_views: int = 4,
) -> None:
    """reconstruct (noisy and clean) returns a Representation rendering rgb/alpha/depth.

    ``image_size`` defaults to the config's ``image_size`` or ``input_size`` field, else 64;
    ``num_views`` is how many views the pretend generator makes (at least ``input_views`` need).
    """
    rec, config = build_tiny(spec, preset)
    S = image_size or getattr(config, "image_size", None) or getattr(config, "input_size", None) or 64
    views = config.input_views
    V = max(num_views, max(views) + 1) if views else num_views
    cameras = orbit(V)
    inputs = views if views is not None else list(range(V))
    images = torch.rand(1, len(inputs), 3, S, S, generator=torch.Generator().manual_seed(0))
    for sigma in (torch.tensor([1.0]), None):
        rep = rec.reconstruct(images, cameras.select_views(inputs), sigma)
        _expect(isinstance(rep, Representation), spec, f"reconstruct returned {type(rep).__name__}, not a Representation")
        _expect(rep.batch_size == 1, spec, f"representation batch_size is {rep.batch_size} for a batch of 1")
        missing = type(config).renders - rep.renders
        _expect(not missing, spec, f"config declares renders {sorted(type(config).renders)}, representation lacks {sorted(missing)}")
        out = rep.render(cameras, render_size, render_size, background=1.0)
        _expect(isinstance(out, RenderOutput), spec, f"render returned {type(out).__name__}, not a RenderOutput")
        H = W = render_size
        _shape(spec, "rendered rgb", out.rgb, (1, V, 3, H, W))
        _shape(spec, "rendered alpha", out.alpha, (1, V, 1, H, W))
        _shape(spec, "rendered depth", out.depth, (1, V, 1, H, W))
        _expect(bool(((out.alpha >= -1e-5) & (out.alpha <= 1 + 1e-5)).all()), spec, "rendered alpha outside [0, 1]")


@torch.no_grad()
def check_feedback_encoder(spec: ComponentSpec, preset: str | None = None, image_size: int | None = None, num_views: int = 2) -> None:
    """forward(maps) returns one ``(B, V, C, S/stride, S/stride)`` tensor per declared slot."""
    enc, config = build_tiny(spec, preset)
    slots = config.output_slots()
    _expect(bool(slots), spec, "output_slots() is empty: the encoder feeds nothing")
    S = image_size or max(32, 2 * max(s.stride for s in slots))
    _expect(enc.map_kind == config.map_kind, spec, "module.map_kind differs from config.map_kind")
    maps = torch.rand(1, num_views, 3, S, S, generator=torch.Generator().manual_seed(0))
    features = enc(maps)
    _expect(isinstance(features, (list, tuple)), spec, f"forward returned {type(features).__name__}, not a list of tensors")
    _expect(len(features) == len(slots), spec, f"forward returned {len(features)} feature tensors for {len(slots)} slots")
    for slot, feature in zip(slots, features):
        _shape(spec, f"features for slot '{slot.name}'", feature, (1, num_views, slot.channels, S // slot.stride, S // slot.stride))


_RUNNERS = {"generator": check_generator, "reconstructor": check_reconstructor, "feedback": check_feedback_encoder}


def check_component(spec: ComponentSpec, preset: str | None = None) -> None:
    """Every check for the spec's kind: spec, YAML round trip, presets, and a CPU run of the
    tiny preset (or ``preset``). Slots are checked as specs only."""
    check_spec(spec)
    preset = preset if preset is not None else (None if spec.slot else spec.tiny_preset)
    check_config_roundtrip(spec, preset)
    check_presets(spec)
    if not spec.slot:
        _RUNNERS[spec.kind](spec, preset)


def check_plugin(plugin: Any) -> None:
    """Check a plugin's entry module (or object): its registration hooks run, every component
    passes :func:`check_spec`, and every recipe path it registers exists and holds ``.yaml``
    files that parse to mappings. Run it against the *installed* package: a package built
    without its recipe files (no package-data line) fails here."""
    from .registry import Registry

    name = getattr(plugin, "__name__", type(plugin).__name__)
    registry = Registry([plugin], load_entry_points=False, disabled=())
    if registry.failures:
        raise AssertionError(f"plugin {name}: {registry.failures[0].error}")
    if not registry.components() and not registry.recipes():
        raise AssertionError(f"plugin {name}: registers no component and no recipe")
    for component in registry.components():
        check_spec(component.spec)
    for recipe, path in registry.recipes().items():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise AssertionError(f"plugin {name}: recipe '{recipe}' ({path}) is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise AssertionError(f"plugin {name}: recipe '{recipe}' ({path}) is not a mapping")
