"""The LGM reconstructor plugin: weight layout, inputs, outputs, time conditioning, weights.

Full-size models are only ever built on the meta device; value tests use the ``tiny`` preset.
The manifests in ``data/`` list the exact key names and shapes of the published checkpoints
(LGM's ``model_fp16_fixrot.safetensors`` and Ouroboros3D's ``recon_model.pth``).
"""

from __future__ import annotations

import json
import logging
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors.torch import save_file

from ouroboros_core.cameras import Cameras
from ouroboros_core.errors import WeightsError
from ouroboros_core.testing import check_component
from ouroboros_core.weights import inspect_file
from ouroboros_plugins.reconstructors.lgm import PRESETS, SPEC, LGMConfig, ouroboros3d_register_components
from ouroboros_plugins.reconstructors.lgm.model import lgm_cameras

DATA = Path(__file__).parent / "data"
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])


def manifest(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def build(preset: str = "tiny", seed: int = 0, **config):
    torch.manual_seed(seed)
    return SPEC.build(config, preset=preset).eval()


def randomize_time_layers(model, seed: int = 1) -> None:
    """Give the zero-initialised time projections values, as after some training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".emb_layers." in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def views(batch: int = 1, num_views: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, num_views, 3, size, size, generator=g)


def input_cameras(batch: int = 1) -> Cameras:
    return Cameras.official(batch_size=batch).select_views([0, 2, 4, 6])


def test_lgm_cameras_radius_and_fov():
    cams = lgm_cameras(dtype=torch.float64)
    assert cams.num_views == 4
    np.testing.assert_allclose(cams.centers.norm(dim=-1).numpy(), 1.5, atol=1e-9)
    np.testing.assert_allclose(torch.rad2deg(cams.fov_y).numpy(), 49.1, atol=1e-9)


def num_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- plugin entry
def test_entry_modules_do_not_import_torch():
    code = (
        "import sys, ouroboros_plugins.reconstructors.lgm, ouroboros_plugins.reconstructors.instantmesh; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registers_one_reconstructor_spec():
    got = []
    ouroboros3d_register_components(register=got.append)
    assert got == [SPEC]
    assert (SPEC.kind, SPEC.name, SPEC.tiny_preset, SPEC.slot) == ("reconstructor", "lgm", "tiny", False)
    assert SPEC.factory == "ouroboros_plugins.reconstructors.lgm.model:build"
    assert SPEC.config.representation == "gaussians" and SPEC.config.renders == {"rgb", "alpha", "depth"}


# ----------------------------------------------------------------------------- architecture
@pytest.mark.parametrize(
    ("preset", "manifest_file", "params"),
    [("big", "lgm-big.json", 415_042_848), ("official", "ouroboros3d-recon_model.json", 424_039_200)],
)
def test_big_on_meta_matches_published_layout(preset, manifest_file, params):
    spec = manifest(manifest_file)
    with torch.device("meta"):
        model = SPEC.build(preset=preset)
    layout = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(layout.items()) == list(spec["keys"].items())  # names, shapes and order
    assert num_params(model) == params == spec["total_params"]
    if "time_layer_keys" in spec:
        assert sorted(k for k in layout if ".emb_layers." in k or "time_embed" in k) == sorted(spec["time_layer_keys"])
        assert len(spec["time_layer_keys"]) == 62


def test_big_forward_shapes_on_meta():
    """The full-size skip wiring: 2 objects x 4 views at 256^2 give 4 * 128^2 Gaussians each."""
    with torch.device("meta"):
        model = SPEC.build(preset="official")
        params = model.gaussian_params(torch.empty(2, 4, 9, 256, 256), torch.zeros(2))
    assert params.shape == (2, 65_536, 14)


@pytest.mark.parametrize(("preset", "params", "splat"), [("small", 412_958_240, 64), ("lgm-tiny", 59_743_360, 64)])
def test_lgm_smaller_configs(preset, params, splat):
    with torch.device("meta"):
        model = SPEC.build(preset=preset)
    assert num_params(model) == params and model.config.splat_size == splat


def test_tiny_is_small():
    model = build("tiny")
    assert model.config.input_size == 64 and model.config.splat_size == 32
    assert 100_000 < num_params(model) < 1_000_000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"up_channels": (32, 16)}, "up_channels must mirror down_channels"),
        ({"up_attention": (True,)}, "up_attention needs 2 entries"),
        ({"input_size": 62}, "input_size 62 must be divisible by 2\\^2"),
        ({"clean_time": 0.0}, "clean_time 0.0 lies inside the noisy range"),
        ({"attention_heads": 5}, "not divisible by attention_heads=5"),
        ({"rotations": "official"}, "Extra inputs are not permitted"),
    ],
)
def test_config_rejects_inconsistent_settings(change, message):
    with pytest.raises(ValidationError, match=message):
        SPEC.make_config(change, preset="tiny")


# ----------------------------------------------------------------------------- inputs
def test_network_input_matches_lgm_rays_and_imagenet_normalisation():
    """Channels 3:9 equal LGM's own ray formula for its default camera (kiui orbit, OpenGL)."""
    model = build("tiny")
    color = torch.tensor([0.2, 0.6, 0.9])
    images = color[None, None, :, None, None].expand(1, 1, 3, 64, 64)
    x = model.network_input(images, lgm_cameras(azimuths_deg=[0.0]))
    assert x.shape == (1, 1, 9, 64, 64)
    torch.testing.assert_close(x[0, 0, :3], ((color - IMAGENET_MEAN) / IMAGENET_STD)[:, None, None].expand(3, 64, 64))
    # LGM: camera at (0, 0, 1.5) looking down -z; dir = ((x+.5-W/2)/f, -(y+.5-H/2)/f, -1), f = H / (2 tan(fovy/2))
    f = 64 / (2 * math.tan(math.radians(49.1) / 2))
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    d = F.normalize(torch.stack([(xs + 0.5 - 32) / f, -(ys + 0.5 - 32) / f, -torch.ones_like(xs)], -1), dim=-1)
    o = torch.tensor([0.0, 0.0, 1.5]).expand_as(d)
    expected = torch.cat([torch.linalg.cross(o, d, dim=-1), d], -1).permute(2, 0, 1)
    torch.testing.assert_close(x[0, 0, 3:], expected, atol=1e-5, rtol=1e-5)


def test_resize_is_antialiased_unless_disabled():
    """Stripes 'on' at columns 4k+1, 4k+2: plain bilinear 4x downsampling samples exactly those
    (white), an antialiased resize averages the period (grey)."""
    cols = torch.arange(256) % 4
    stripes = ((cols == 1) | (cols == 2)).float().expand(1, 1, 3, 256, 256)
    cams = lgm_cameras(azimuths_deg=[0.0])
    grey = build("tiny").network_input(stripes, cams)[0, 0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    white = build("tiny", antialias=False).network_input(stripes, cams)[0, 0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    torch.testing.assert_close(white, torch.ones(64, 64))
    assert (grey[:, 2:-2] - 0.5).abs().max() < 0.02


def test_time_values_per_mode():
    sigma = torch.tensor([0.001, 2.0, 1000.0, 0.0])
    official = build("tiny", time_input="official").time_values(sigma, 4, torch.device("cpu"))
    torch.testing.assert_close(official, torch.tensor([0.25 * math.log(0.001), 0.25 * math.log(2.0), 0.25 * math.log(1000.0), 0.0]))
    assert build("tiny", time_input="official").time_values(None, 2, torch.device("cpu")).tolist() == [0.0, 0.0]
    paper = build("tiny", time_input="paper", sigma_range=(0.002, 700.0), clean_time=-4.0)
    torch.testing.assert_close(
        paper.time_values(sigma, 4, torch.device("cpu")),
        torch.tensor([0.25 * math.log(0.002), 0.25 * math.log(2.0), 0.25 * math.log(700.0), -4.0]),
    )
    assert paper.time_values(None, 3, torch.device("cpu")).tolist() == [-4.0] * 3
    torch.testing.assert_close(paper.time_values(0.5, 2, torch.device("cpu")), torch.full((2,), 0.25 * math.log(0.5)))
    assert build("tiny", time_input="none").time_values(sigma, 4, torch.device("cpu")) is None


# ----------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("num_views", [4, 6])
def test_tiny_forward_gaussians_and_renders(num_views):
    model = build("tiny")
    cams = Cameras.orbit([i * 360 / num_views for i in range(num_views)], 0.0)
    with torch.no_grad():
        cloud = model.reconstruct(views(num_views=num_views, size=96), cams, torch.tensor([3.0]))
        n = num_views * 32 * 32
        assert cloud.means.shape == (1, n, 3) and cloud.quats.shape == (1, n, 4) and cloud.scales.shape == (1, n, 3)
        assert cloud.opacities.shape == (1, n) and cloud.colors.shape == (1, n, 3) and not cloud.raw_quaternions
        assert cloud.means.abs().max() <= 1 and (cloud.scales > 0).all()
        assert ((cloud.opacities > 0) & (cloud.opacities < 1)).all() and ((cloud.colors >= 0) & (cloud.colors <= 1)).all()
        torch.testing.assert_close(cloud.quats.norm(dim=-1), torch.ones(1, n))
        out = cloud.render(Cameras.official(), 24, 24)
    assert out.rgb.shape == (1, 8, 3, 24, 24) and out.alpha.shape == (1, 8, 1, 24, 24) and out.depth.shape == (1, 8, 1, 24, 24)
    assert out.alpha.amax() > 0.5 and out.rgb.min() >= 0 and out.rgb.max() <= 1  # the Gaussians are visible


def test_gaussian_index_is_view_row_column():
    """Gaussian view*S^2 + row*S + col comes from that view's pixel, with LGM's activations."""
    model = build("tiny", time_input="none")
    x = model.network_input(views(), input_cameras())
    with torch.no_grad():
        raw = model.conv(model.unet(x.flatten(0, 1), num_views=4))  # (4, 14, 32, 32)
        params = model.gaussian_params(x, None)
    v, r, c = 2, 5, 7
    g, p = raw[v, :, r, c], params[0, v * 32 * 32 + r * 32 + c]
    torch.testing.assert_close(p[0:3], g[0:3].clamp(-1, 1))
    torch.testing.assert_close(p[3], torch.sigmoid(g[3]))
    torch.testing.assert_close(p[4:7], 0.1 * F.softplus(g[4:7]))
    torch.testing.assert_close(p[7:11], g[7:11] / g[7:11].norm())
    torch.testing.assert_close(p[11:14], 0.5 * torch.tanh(g[11:14]) + 0.5)


def test_official_rotation_normalises_across_gaussians():
    per_gaussian = build("tiny", rotation="per_gaussian", input_size=32)
    official = build("tiny", rotation="official", input_size=32)
    official.load_state_dict(per_gaussian.state_dict())
    images, cams = views(batch=2), input_cameras(2)
    with torch.no_grad():
        a = per_gaussian(images, cams)
        b = official(images, cams)
        raw = per_gaussian.conv(per_gaussian.unet(per_gaussian.network_input(images, cams).flatten(0, 1), 4, per_gaussian.time_values(None, 2, "cpu")))
    raw_q = raw.reshape(2, 4, 14, 16, 16).permute(0, 1, 3, 4, 2).reshape(2, -1, 14)[..., 7:11]
    torch.testing.assert_close(b.quats, raw_q / raw_q.norm(dim=1, keepdim=True))  # each component over all N
    torch.testing.assert_close(a.quats, raw_q / raw_q.norm(dim=-1, keepdim=True))  # each Gaussian
    assert b.raw_quaternions and not a.raw_quaternions
    assert b.quats.norm(dim=-1).max() < 0.2  # far from unit length: the renderer must not renormalise
    torch.testing.assert_close(a.means, b.means)  # only the rotation differs


def test_time_conditioning_is_identity_at_init_and_plain_weights_load(tmp_path, caplog):
    plain = build("tiny", time_input="none", seed=3, input_size=32)
    timed = build("tiny", time_input="paper", seed=4, input_size=32)
    save_file(plain.state_dict(), tmp_path / "model_fp16_fixrot.safetensors")
    with caplog.at_level(logging.INFO):
        timed.load_weights(str(tmp_path / "model_fp16_fixrot.safetensors"))
    assert "time tensors keep their zero initialisation" in caplog.text
    images, cams = views(batch=2), input_cameras(2)
    with torch.no_grad():
        ref = plain(images, cams)
        for sigma in (None, torch.tensor([0.01, 50.0])):
            out = timed(images, cams, sigma)
            assert torch.equal(out.means, ref.means) and torch.equal(out.colors, ref.colors) and torch.equal(out.quats, ref.quats)
        randomize_time_layers(timed)
        assert not torch.equal(timed(images, cams, torch.tensor([0.01, 50.0])).colors, ref.colors)


def test_safetensors_and_pth_round_trip_give_identical_outputs(tmp_path):
    source = build("tiny", time_input="official", rotation="official", seed=5, input_size=32)
    randomize_time_layers(source)
    save_file(source.state_dict(), tmp_path / "tiny.safetensors")
    torch.save(source.state_dict(), tmp_path / "recon_model.pth")
    images, cams, sigma = views(batch=2), input_cameras(2), torch.tensor([0.3, 40.0])
    with torch.no_grad():
        ref = source(images, cams, sigma)
        for name in ("tiny.safetensors", "recon_model.pth"):
            copy = build("tiny", time_input="official", rotation="official", seed=6, input_size=32)
            copy.load_weights(str(tmp_path / name))
            out = copy(images, cams, sigma)
            for field in ("means", "quats", "scales", "opacities", "colors"):
                assert torch.equal(getattr(out, field), getattr(ref, field)), (name, field)


def test_load_weights_refuses_mismatched_files(tmp_path):
    timed = build("tiny", time_input="official", rotation="official")
    torch.save(timed.state_dict(), tmp_path / "recon_model.pth")
    with pytest.raises(WeightsError, match="recon_model.pth was trained with rotation 'official'.*set rotation: official"):
        build("tiny", time_input="official", rotation="per_gaussian").load_weights(str(tmp_path / "recon_model.pth"))
    plain = build("tiny", time_input="none", rotation="per_gaussian")
    save_file(plain.state_dict(), tmp_path / "model_fp16.safetensors")
    with pytest.raises(WeightsError, match="set rotation: official or use model_fp16_fixrot.safetensors"):
        plain.load_weights(str(tmp_path / "model_fp16.safetensors"))
    build("tiny", time_input="none", rotation="official").load_weights(str(tmp_path / "model_fp16.safetensors"))
    with pytest.raises(WeightsError, match="time_input: none.*fix: set time_input: official"):
        build("tiny", time_input="none", rotation="official").load_weights(str(tmp_path / "recon_model.pth"))
    sd = plain.state_dict()
    del sd["unet.conv_in.bias"]
    save_file(sd, tmp_path / "broken.safetensors")
    with pytest.raises(WeightsError, match="missing 1 key\\(s\\): unet.conv_in.bias"):
        build("tiny", time_input="none").load_weights(str(tmp_path / "broken.safetensors"))


def test_ply_drops_faint_gaussians_like_lgm(tmp_path):
    from plyfile import PlyData

    model = build("tiny", input_size=32, ply_opacity_threshold=0.5, near_plane=0.3)
    with torch.no_grad():
        cloud = model(views(size=32), input_cameras())
    assert cloud.near_plane == 0.3
    # LGM's rasterizer clamps splat alpha at 0.99 (its forward.cu); the cloud carries that
    # (the presets of LGM's own configs); our tiny models were trained with gsplat's 0.999
    assert cloud.alpha_max == 0.999 and build("tiny", alpha_max=0.99)(views(size=64), input_cameras()).alpha_max == 0.99
    assert [SPEC.make_config(None, p).alpha_max for p in ("big", "official", "small", "lgm-tiny", "tiny32")] == [0.99] * 4 + [0.999]
    kept = int((cloud.opacities[0] >= 0.5).sum())
    assert 0 < kept < cloud.num_gaussians
    vertices = PlyData.read(str(cloud.save(tmp_path / "a.ply")))["vertex"]
    assert vertices.count == kept
    assert PlyData.read(str(cloud.save(tmp_path / "b.ply", min_opacity=0.0)))["vertex"].count == cloud.num_gaussians


def test_load_weights_from_a_folder_uses_the_default_file(tmp_path):
    source = build("tiny", time_input="none", seed=7, input_size=32)
    save_file(source.state_dict(), tmp_path / "model_fp16_fixrot.safetensors")
    save_file({"unrelated": torch.zeros(1)}, tmp_path / "other.safetensors")
    copy = build("tiny", time_input="none", seed=8, input_size=32)
    assert copy.default_weights_filename == "model_fp16_fixrot.safetensors"
    copy.load_weights(str(tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), source.state_dict().values()))
    assert build("tiny", time_input="paper").default_weights_filename == "model_fp16_fixrot.safetensors"
    assert build("tiny", time_input="official", rotation="official").default_weights_filename == "recon_model.pth"
    assert build("tiny", time_input="none", rotation="official").default_weights_filename == "model_fp16.safetensors"


# ----------------------------------------------------------------------------- training
def test_render_loss_reaches_every_parameter():
    model = build("tiny", time_input="paper", input_size=32).train()
    images, cams = views(), input_cameras()
    target = torch.rand(1, 4, 3, 16, 16, generator=torch.Generator().manual_seed(9))

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        out = model(images, cams, torch.tensor([1.5])).render(cams, 16, 16)
        ((out.rgb - target) ** 2).mean().add(out.alpha.mean()).backward()
        return {n: p.grad for n, p in model.named_parameters()}

    at_init = grads()
    # the zero projections block the time MLP at init, but themselves receive gradient
    assert all(g.abs().sum() == 0 for n, g in at_init.items() if n.startswith("unet.time_embed."))
    assert all(g.abs().sum() > 0 for n, g in at_init.items() if ".emb_layers." in n)
    randomize_time_layers(model)
    zero = [n for n, g in grads().items() if g is None or g.abs().sum() == 0]
    assert zero == []


def test_batch_of_two_equals_two_single_calls():
    model = build("tiny", time_input="official", rotation="official", input_size=32)
    randomize_time_layers(model)
    images = views(batch=2, size=32)
    cams = Cameras.cat([input_cameras(1), Cameras.orbit([20, 110, 200, 290], 15.0)])  # two different rigs
    sigma = torch.tensor([0.05, 30.0])
    with torch.no_grad():
        both = model(images, cams, sigma)
        for i in range(2):
            one = model(images[i : i + 1], Cameras(cams.c2w[i : i + 1], cams.intrinsics[i : i + 1]), sigma[i : i + 1])
            for field in ("means", "quats", "scales", "opacities", "colors"):
                torch.testing.assert_close(getattr(both, field)[i : i + 1], getattr(one, field), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- weights files
def write_sparse_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    """A valid fp16 .safetensors file of the given layout whose data is a sparse hole of zeros
    (no disk or memory for 415M parameters; only the header is ever read)."""
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = math.prod(shape) * 2
        header[key] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        f.truncate(8 + len(blob) + offset)


def test_inspect_published_layouts(tmp_path):
    plain = manifest("lgm-big.json")["keys"]
    fixrot = tmp_path / "model_fp16_fixrot.safetensors"
    write_sparse_safetensors(fixrot, plain)
    report = inspect_file(fixrot, SPEC, "big")
    assert report.ok and report.file_parameters == 415_042_848, report.format()
    timed = inspect_file(fixrot, SPEC, "official")  # plain LGM into the time-conditioned model
    assert timed.ok and len(timed.diff.allowed_missing) == 62 and "keep their initial values" in timed.format()

    recon = tmp_path / "recon_model.pth"  # meta tensors: torch.save writes the layout, not data
    torch.save({k: torch.empty(s, dtype=torch.float16, device="meta") for k, s in manifest("ouroboros3d-recon_model.json")["keys"].items()}, recon)
    assert inspect_file(recon, SPEC, "official").ok
    wrong = inspect_file(recon, SPEC, "big")
    assert not wrong.ok and "time_input: none" in wrong.format()

    broken = tmp_path / "broken.safetensors"
    write_sparse_safetensors(broken, {k: s for k, s in plain.items() if k != "unet.up_blocks.2.attns.1.attn.qkv.weight"})
    report = inspect_file(broken, SPEC, "big")
    assert not report.ok and "missing 1 key(s): unet.up_blocks.2.attns.1.attn.qkv.weight" in report.format()


def test_presets_are_valid_configs():
    for name in PRESETS:
        assert isinstance(SPEC.make_config(preset=name), LGMConfig)


def test_conformance_kit():
    check_component(SPEC)
