"""Offline with the published recipe: one error lists every missing weights file with its
recipe key and one download command; ``recipes validate --check-weights`` reports them too."""

from __future__ import annotations

import pytest
from huggingface_hub import constants
from PIL import Image

from ouroboros_core.cli import main

MV, RECON = "huanngzh/Ouroboros3D-SVD-LGM:mv_model_unet.pth", "huanngzh/Ouroboros3D-SVD-LGM:recon_model.pth"
BASE = "stabilityai/stable-video-diffusion-img2vid"
FETCH = "hf download huanngzh/Ouroboros3D-SVD-LGM mv_model_unet.pth recon_model.pth && hf download stabilityai/stable-video-diffusion-img2vid`"


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached


def _assert_lists_everything(text: str) -> None:
    assert (
        "3 weights sources are not available. Not in the local Hugging Face cache and the hub cannot be reached "
        f"(offline): generator.weights, feedback.0.weights, feedback.1.weights = {MV}; "
        f"generator.config.base_weights = {BASE}; reconstructor.weights = {RECON} (fix: "
    ) in text
    assert FETCH in text and "--set KEY=PATH" in text


def test_generate_offline_lists_every_missing_file_at_once(tmp_path, capsys, offline, monkeypatch):
    import ouroboros_core.build as build

    monkeypatch.setattr(build.ComponentInfo, "__init__", lambda *a, **k: pytest.fail("a component was built"))
    image = tmp_path / "photo.png"
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((200, 0, 0, 255), (8, 8, 24, 24))
    rgba.save(image)
    assert main(["generate", str(image), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    _assert_lists_everything(err)
    assert not (tmp_path / "out").exists()


def test_recipes_validate_check_weights_reports_missing_files(capsys, offline):
    assert main(["recipes", "validate", "svd-lgm"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "svd-lgm: valid (svd + lgm + adapter + adapter)" and out[1].startswith("weights: not checked")
    assert main(["recipes", "validate", "svd-lgm", "--check-weights"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "svd-lgm: valid (svd + lgm + adapter + adapter)"
    _assert_lists_everything(out[1])


def test_local_sources_make_the_check_pass(tmp_path, capsys, offline):
    files = {name: tmp_path / name for name in ("mv.pth", "recon.pth")}
    for path in files.values():
        path.write_bytes(b"")
    base = tmp_path / "svd-base"
    base.mkdir()
    sets = [
        f"generator.weights={files['mv.pth']}", f"reconstructor.weights={files['recon.pth']}",
        f"feedback.0.weights={files['mv.pth']}", f"feedback.1.weights={files['mv.pth']}",
        f"generator.config.base_weights={base}",
    ]
    assert main(["recipes", "validate", "svd-lgm", "--check-weights"] + [a for s in sets for a in ("--set", s)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "weights: all available (local, cached or downloadable)"
