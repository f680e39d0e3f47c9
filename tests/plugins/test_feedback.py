"""The ``adapter`` feedback encoder (reference: official-ouroboros3d.md §3 and §7)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ouroboros_core.errors import InputError, WeightsError
from ouroboros_core.weights import inspect_file
from ouroboros_plugins.feedback import SPEC

MANIFEST = Path(__file__).parent / "data" / "ouroboros3d-mv_model_unet.json"
torch.set_num_threads(2)


def _maps(batch: int = 2, views: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, views, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_full_size_matches_the_published_adapter_keys():
    with torch.device("meta"):
        enc = SPEC.build(preset="official")
    manifest = json.loads(MANIFEST.read_text())["keys"]
    for index in (0, 1):
        prefix = f"cond_encoder.{index}."
        expected = {k[len(prefix):]: v for k, v in manifest.items() if k.startswith(prefix)}
        assert {k: list(v.shape) for k, v in enc.state_dict().items()} == expected
    assert sum(p.numel() for p in enc.parameters()) == 115_264_320
    assert [(s.channels, s.stride) for s in enc.config.output_slots()] == [(320, 8), (640, 16), (1280, 32), (1280, 64)]


def test_features_at_init_are_the_identity_blocks():
    """block2 starts at zero, so each stage reduces to its projections (§3): f0 = conv_in(unshuffle(x)),
    f_i = in_conv(avgpool(f_{i-1})) (no in_conv when the width stays)."""
    torch.manual_seed(0)
    enc = SPEC.build({"channels": [8, 16, 16]}, preset="tiny")
    maps = _maps()
    with torch.no_grad():
        feats = enc(maps)
        x = maps.flatten(0, 1)
        f0 = F.conv2d(F.pixel_unshuffle(x, 8), enc.conv_in.weight, enc.conv_in.bias, padding=1)
        f1 = F.conv2d(F.avg_pool2d(f0, 2), enc.body[1].in_conv.weight, enc.body[1].in_conv.bias)
        f2 = F.avg_pool2d(f1, 2)
    assert enc.body[2].in_conv is None
    for got, want in zip(feats, (f0, f1, f2)):
        assert got.shape == (2, 3, *want.shape[1:])
        assert torch.allclose(got.flatten(0, 1), want, atol=1e-6)


def test_residual_blocks_act_once_trained():
    torch.manual_seed(0)
    enc = SPEC.build(preset="tiny")
    before = enc(_maps())[0].detach()
    torch.nn.init.normal_(enc.body[0].block2.weight, std=0.1)
    assert (enc(_maps())[0] - before).abs().max() > 1e-3


def test_zero_initialised_outputs_give_zero_features_and_train():
    enc = SPEC.build(preset="tiny-paper")
    feats = enc(_maps())
    assert all(torch.equal(f, torch.zeros_like(f)) for f in feats)
    sum(f.sum() for f in feats).backward()
    assert enc.out_proj[0].weight.grad.abs().sum() > 0


def test_bad_maps_are_input_errors():
    enc = SPEC.build(preset="tiny")
    with pytest.raises(InputError, match=r"\(B, V, 3, H, W\)"):
        enc(torch.rand(2, 3, 32, 32))
    with pytest.raises(InputError, match="not divisible by 16"):
        enc(torch.rand(1, 2, 3, 40, 40))


def _combined_file(tmp_path: Path) -> tuple[Path, list]:
    """An official-layout file: two adapters next to other (generator) keys."""
    torch.manual_seed(3)
    encs = [SPEC.build({"map_kind": k}, preset="tiny") for k in ("rgb", "ccm")]
    for enc in encs:
        for p in enc.parameters():
            torch.nn.init.normal_(p)
    sd = {"unet.conv_in.weight": torch.zeros(2, 2), "down_plucker.0.embed.0.bias": torch.zeros(2)}
    for i, enc in enumerate(encs):
        sd.update({f"cond_encoder.{i}.{k}": v for k, v in enc.state_dict().items()})
    path = tmp_path / "mv_model_unet.pth"
    torch.save(sd, path)
    return path, encs


def test_each_map_kind_takes_its_part_of_the_official_checkpoint(tmp_path):
    path, encs = _combined_file(tmp_path)
    for kind, ref in zip(("rgb", "ccm"), encs):
        enc = SPEC.build({"map_kind": kind}, preset="tiny")
        enc.load_weights(str(tmp_path))  # a folder: the default file name is mv_model_unet.pth
        assert all(torch.equal(v, ref.state_dict()[k]) for k, v in enc.state_dict().items())
    alpha = SPEC.build({"map_kind": "alpha"}, preset="tiny")
    with pytest.raises(WeightsError, match="checkpoint_prefix"):
        alpha.load_weights(str(path))
    alpha = SPEC.build({"map_kind": "alpha", "checkpoint_prefix": "cond_encoder.1."}, preset="tiny")
    alpha.load_weights(str(path))
    assert torch.equal(alpha.conv_in.weight, encs[1].conv_in.weight)
    assert inspect_file(path, SPEC, "tiny").ok


def test_paper_encoder_on_official_weights_keeps_zero_outputs(tmp_path):
    path, encs = _combined_file(tmp_path)
    enc = SPEC.build({"map_kind": "rgb"}, preset="tiny-paper")
    enc.load_weights(str(path))
    assert torch.equal(enc.conv_in.weight, encs[0].conv_in.weight)
    assert all(f.abs().max() == 0 for f in enc(_maps()))


def test_own_file_round_trip_and_mismatch(tmp_path):
    from safetensors.torch import save_file

    enc = SPEC.build(preset="tiny-paper")
    torch.nn.init.normal_(enc.out_proj[1].weight)
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, tmp_path / "rgb.safetensors")
    again = SPEC.build(preset="tiny-paper")
    again.load_weights(str(tmp_path / "rgb.safetensors"))
    maps = _maps()
    assert all(torch.equal(a, b) for a, b in zip(enc(maps), again(maps)))

    wide = SPEC.build({"channels": [32, 128]}, preset="tiny-paper")
    with pytest.raises(WeightsError, match=r"body\.1\.in_conv\.weight"):
        wide.load_weights(str(tmp_path / "rgb.safetensors"))


def test_conformance_kit():
    from ouroboros_core.testing import check_component

    check_component(SPEC)
    check_component(SPEC, "tiny-paper")
    check_component(SPEC, "tiny-pixel")
