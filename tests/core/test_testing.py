"""The conformance kit (ouroboros_core.testing): passes correct toy components, and names the
broken part of components that break the contracts."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from pydantic import field_serializer
from torch import nn

from ouroboros_core.cameras import OFFICIAL_RADIUS, Cameras, camera_rays
from ouroboros_core.components import (
    ComponentSpec,
    FeedbackEncoderConfig,
    FeedbackSlot,
    GeneratorConfig,
    ReconstructorConfig,
)
from ouroboros_core.interfaces import (
    FeedbackEncoder,
    GenerationContext,
    MultiViewGenerator,
    Reconstructor,
    RenderOutput,
    Representation,
)
from ouroboros_core.testing import (
    check_component,
    check_config_roundtrip,
    check_feedback_encoder,
    check_generator,
    check_reconstructor,
    check_spec,
    orbit,
)


# ---------------------------------------------------------------------- toy generator
class PixelGeneratorConfig(GeneratorConfig):
    num_views: int = 3
    image_size: int = 64
    mean: float = 0.5
    std: float = 0.2

    def feedback_slots(self) -> list[FeedbackSlot]:
        return [FeedbackSlot("full", 3, 1), FeedbackSlot("half", 2, 2)]


class PixelGenerator(MultiViewGenerator):
    """Exact denoiser of pixel data distributed N(mean, std^2); identity autoencoder.

    Feedback features are added to x0: the full-resolution slot directly, the half-resolution
    one averaged over channels and upsampled.
    """

    def __init__(self, config: PixelGeneratorConfig) -> None:
        super().__init__()
        self.config = config

    def prepare(self, image, cameras, **kwargs):
        B, V, S = image.shape[0], self.config.num_views, self.config.image_size
        return GenerationContext(B, cameras, (B, V, 3, S, S), {"image": image})

    def denoise(self, x, sigma, context, feedback=None):
        m, d = self.config.mean, self.config.std
        s = sigma.view(-1, 1, 1, 1, 1)
        x0 = m + d**2 / (d**2 + s**2) * (x - m)
        if feedback is not None:
            full, half = feedback
            B, V = half.shape[:2]
            up = F.interpolate(half.flatten(0, 1), scale_factor=2.0).unflatten(0, (B, V))
            x0 = x0 + full + up.mean(2, keepdim=True)
        return x0

    def encode(self, images):
        return images

    def decode(self, latents):
        return latents


# ---------------------------------------------------------------------- toy reconstructor
class SphereReconstructorConfig(ReconstructorConfig):
    radius: float = 0.5
    image_size: int = 16


@dataclasses.dataclass
class ColouredSphere(Representation):
    """A sphere at the origin with one colour per object, rendered by ray casting (test only)."""

    colour: torch.Tensor  # (B, 3)
    radius: float

    def render(self, cameras: Cameras, height: int, width: int, background=1.0) -> RenderOutput:
        o, d = camera_rays(cameras, height, width)  # (B, V, H, W, 3)
        b = (o * d).sum(-1)
        disc = b**2 - ((o * o).sum(-1) - self.radius**2)
        hit = disc > 0
        t = torch.where(hit, -b - disc.clamp_min(0).sqrt(), torch.zeros_like(b))
        forward = cameras.c2w[..., :3, 2][:, :, None, None, :]
        z = t * (d * forward).sum(-1)
        alpha = hit.float().unsqueeze(2)  # (B, V, 1, H, W)
        rgb = self.colour[:, None, :, None, None] * alpha + background * (1 - alpha)
        return RenderOutput(rgb=rgb, alpha=alpha, depth=z.unsqueeze(2))

    def save(self, path, index=0):
        raise NotImplementedError("test representation")

    @property
    def batch_size(self) -> int:
        return self.colour.shape[0]


class SphereReconstructor(Reconstructor):
    def __init__(self, config: SphereReconstructorConfig) -> None:
        super().__init__()
        self.config = config

    def reconstruct(self, images, cameras, sigma=None):
        return ColouredSphere(images.mean(dim=(1, 3, 4)), self.config.radius)


# ---------------------------------------------------------------------- toy encoder
class PoolEncoderConfig(FeedbackEncoderConfig):
    channels: list[int] = [3, 2]

    def output_slots(self) -> list[FeedbackSlot]:
        return [FeedbackSlot(f"s{i}", c, 2**i) for i, c in enumerate(self.channels)]


class PoolEncoder(FeedbackEncoder):
    def __init__(self, config: PoolEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.proj = nn.ModuleList(nn.Conv2d(3, c, 1) for c in config.channels)

    def forward(self, maps):
        B, V = maps.shape[:2]
        flat = maps.flatten(0, 1)
        return [p(F.avg_pool2d(flat, 2**i)).unflatten(0, (B, V)) for i, p in enumerate(self.proj)]


def spec(kind, name, config, factory, **kwargs) -> ComponentSpec:
    kwargs.setdefault("presets", {"tiny": {}})
    return ComponentSpec(kind, name, config, factory, **kwargs)


GEN = spec("generator", "pixel-gen", PixelGeneratorConfig, PixelGenerator, presets={"tiny": {"image_size": 8}, "big": {"image_size": 128}})
REC = spec("reconstructor", "sphere", SphereReconstructorConfig, SphereReconstructor, presets={"tiny": {"input_views": [0, 2]}})
ENC = spec("feedback", "pool-enc", PoolEncoderConfig, PoolEncoder)


# ---------------------------------------------------------------------- passing components
@pytest.mark.parametrize("component", [GEN, REC, ENC], ids=lambda s: s.name)
def test_correct_components_pass(component):
    check_component(component)


def test_slot_is_checked_as_a_spec_only():
    check_component(spec("reconstructor", "later", ReconstructorConfig, "not_built_yet:build", slot=True, slot_message="use sphere"))


def test_toy_sphere_renders_the_expected_depth():
    """The test representation itself: the ray through the image centre hits the sphere at
    distance (camera radius - sphere radius)."""
    rep = ColouredSphere(torch.tensor([[0.2, 0.4, 0.6]]), 0.5)
    out = rep.render(orbit(4), 9, 9)
    assert torch.allclose(out.depth[..., 4, 4], torch.full((1, 4, 1), OFFICIAL_RADIUS - 0.5), atol=1e-5)
    assert torch.equal(out.rgb[0, :, :, 0, 0], torch.ones(4, 3))  # corner: background
    assert torch.allclose(out.rgb[0, :, :, 4, 4], torch.tensor([0.2, 0.4, 0.6]).expand(4, 3))


# ---------------------------------------------------------------------- what the kit catches
def fails(check, component, match: str, **kwargs) -> None:
    with pytest.raises(AssertionError, match=match):
        check(component, **kwargs)


def test_spec_problems_are_named():
    fails(check_spec, spec("generator", "Pixel Gen", PixelGeneratorConfig, PixelGenerator), r"generator 'Pixel Gen': name must be lowercase")
    fails(check_spec, spec("generator", "g", ReconstructorConfig, PixelGenerator), "config must be a subclass of .*GeneratorConfig")
    fails(check_spec, spec("generator", "g", PixelGeneratorConfig, "missing_module_q:build"), "factory 'missing_module_q:build' cannot be imported")
    fails(check_spec, spec("generator", "g", PixelGeneratorConfig, PixelGenerator, presets={}), "tiny_preset 'tiny' is not one of its presets")
    fails(check_spec, spec("generator", "g", PixelGeneratorConfig, PixelGenerator, slot=True), "a slot needs a slot_message")


def test_config_that_changes_through_yaml_is_caught():
    class Rounding(PixelGeneratorConfig):
        @field_serializer("std")
        def _round(self, value: float) -> float:
            return round(value, 1)

    check_config_roundtrip(spec("generator", "g", Rounding, PixelGenerator))  # default 0.2 survives
    fails(check_component, spec("generator", "g", Rounding, PixelGenerator, presets={"tiny": {"std": 0.25}}), "config changes through YAML")


def test_invalid_preset_is_named():
    bad = spec("generator", "g", PixelGeneratorConfig, PixelGenerator, presets={"tiny": {}, "typo": {"imagesize": 8}})
    fails(check_component, bad, r"generator 'g': config \(preset 'typo'\) does not validate")


def test_generator_contract_violations():
    class WrongDecode(PixelGenerator):
        def decode(self, latents):
            return latents[..., ::2, ::2]

    class NaNs(PixelGenerator):
        def denoise(self, x, sigma, context, feedback=None):
            return super().denoise(x, sigma, context, feedback) * float("nan")

    class Multiplies(PixelGenerator):
        def denoise(self, x, sigma, context, feedback=None):
            x0 = super().denoise(x, sigma, context)
            return x0 * (1 + feedback[0]) if feedback is not None else x0 + 1

    class KeepsNoConfig(PixelGenerator):
        def __init__(self, config):
            super().__init__(config.model_copy(update={"std": 0.3}))

    fails(check_generator, spec("generator", "g", PixelGeneratorConfig, WrongDecode), r"decode output has shape \(1, 3, 3, 32, 32\), expected \(1, 3, 3, 64, 64\)")
    fails(check_generator, spec("generator", "g", PixelGeneratorConfig, NaNs), "denoise output contains NaN")
    fails(check_generator, spec("generator", "g", PixelGeneratorConfig, Multiplies), "zero feedback features change the prediction")
    fails(check_generator, spec("generator", "g", PixelGeneratorConfig, KeepsNoConfig), "not the config it was built from")
    fails(check_generator, spec("generator", "g", PixelGeneratorConfig, lambda c: nn.Identity()), "factory returned Identity, not a MultiViewGenerator")


def test_reconstructor_contract_violations():
    class FlatAlpha(ColouredSphere):
        def render(self, cameras, height, width, background=1.0):
            out = super().render(cameras, height, width, background)
            return RenderOutput(out.rgb, out.alpha[:, :, 0], out.depth)

    class BadRecon(SphereReconstructor):
        def reconstruct(self, images, cameras, sigma=None):
            return FlatAlpha(images.mean(dim=(1, 3, 4)), 0.5)

    class Unbatched(SphereReconstructor):
        def reconstruct(self, images, cameras, sigma=None):
            return {"colour": images.mean()}

    fails(check_reconstructor, spec("reconstructor", "r", SphereReconstructorConfig, BadRecon), r"rendered alpha has shape \(1, 4, 32, 32\), expected \(1, 4, 1, 32, 32\)")
    fails(check_reconstructor, spec("reconstructor", "r", SphereReconstructorConfig, Unbatched), "reconstruct returned dict, not a Representation")


def test_reconstructor_reads_only_its_input_views():
    seen = []

    class Recording(SphereReconstructor):
        def reconstruct(self, images, cameras, sigma=None):
            seen.append((images.shape[1], cameras.num_views, sigma))
            return super().reconstruct(images, cameras, sigma)

    check_reconstructor(spec("reconstructor", "r", SphereReconstructorConfig, Recording, presets={"tiny": {"input_views": [1, 5]}}))
    assert [(n, v) for n, v, _ in seen] == [(2, 2), (2, 2)]
    assert seen[0][2] is not None and seen[1][2] is None  # noisy, then clean input


def test_feedback_encoder_contract_violations():
    class DropsOne(PoolEncoder):
        def forward(self, maps):
            return super().forward(maps)[:1]

    class WrongStride(PoolEncoder):
        def forward(self, maps):
            feats = super().forward(maps)
            return [feats[0], feats[0][:, :, :2]]

    fails(check_feedback_encoder, spec("feedback", "e", PoolEncoderConfig, DropsOne), "returned 1 feature tensors for 2 slots")
    fails(check_feedback_encoder, spec("feedback", "e", PoolEncoderConfig, WrongStride), r"features for slot 's1' has shape \(1, 2, 2, 32, 32\), expected \(1, 2, 2, 16, 16\)")


def test_check_plugin_passes_a_plugin_and_catches_missing_recipe_files(tmp_path):
    import types

    from ouroboros_core import hookimpl
    from ouroboros_core.testing import check_plugin

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "demo.yaml").write_text("extends: tiny\nsampler: {steps: 3}\n")

    def make(folder):
        plugin = types.ModuleType("ouroboros3d_demo")

        @hookimpl
        def ouroboros3d_register_components(register):
            register(ComponentSpec("reconstructor", "demo", ReconstructorConfig, "json:loads", tiny_preset=None))

        @hookimpl
        def ouroboros3d_register_recipes(register):
            register(folder)

        plugin.ouroboros3d_register_components = ouroboros3d_register_components
        plugin.ouroboros3d_register_recipes = ouroboros3d_register_recipes
        return plugin

    check_plugin(make(recipes))
    with pytest.raises(AssertionError, match=r"plugin ouroboros3d_demo: FileNotFoundError while registering recipes .*gone is not a .yaml file or a folder"):
        check_plugin(make(tmp_path / "gone"))
    empty = tmp_path / "empty"  # a recipes package installed without its package data
    empty.mkdir()
    (empty / "__init__.py").write_text("")
    with pytest.raises(AssertionError, match=r"registered recipe folder .*empty holds no .yaml files"):
        check_plugin(make(empty))
    (recipes / "demo.yaml").write_text("- not a mapping\n")
    with pytest.raises(AssertionError, match="recipe 'demo' .* is not a mapping"):
        check_plugin(make(recipes))
