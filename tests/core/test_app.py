"""The web app without a browser: its generation service runs generate's code path (same
files, same error lines), loads models once per recipe, and reports every sampling step.
The page itself is tested in tests/e2e/test_app_browser.py."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ouroboros_core.app import GenerationService, ModelCache, Request, import_gradio, message_for_upload, serve
from ouroboros_core.cli import main
from ouroboros_core.errors import UserError
from ouroboros_core.pipeline import ImageTo3DPipeline

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "toy-object.png")


class CountingLoader:
    """Loads the tiny pipeline once for the whole module and counts the cache's requests."""

    pipe: ImageTo3DPipeline | None = None

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, recipe) -> ImageTo3DPipeline:
        self.calls.append(recipe.name)
        if CountingLoader.pipe is None:
            CountingLoader.pipe = ImageTo3DPipeline.from_recipe(recipe)
        return CountingLoader.pipe


def _cli_error(capsys, monkeypatch, folder: Path, name: str) -> str:
    """What ``generate NAME`` run in ``folder`` prints after ``error: ``."""
    monkeypatch.chdir(folder)
    assert main(["generate", name, "--recipe", "tiny", "-o", str(folder / "out")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ")
    return line.removeprefix("error: ")


@pytest.mark.parametrize("kind", ["corrupt", "folder", "transparent"])
def test_a_bad_upload_gives_the_line_generate_prints(kind, tmp_path, capsys, monkeypatch):
    uploads = tmp_path / "gradio" / "0123abcd"  # where gradio keeps an upload: a folder per file
    uploads.mkdir(parents=True)
    name = {"corrupt": "photo.png", "folder": "shots", "transparent": "empty.png"}[kind]
    upload = uploads / name
    if kind == "corrupt":
        upload.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    elif kind == "folder":
        upload.mkdir()
    else:
        Image.fromarray(np.zeros((16, 16, 4), np.uint8)).save(upload)
    expected = _cli_error(capsys, monkeypatch, uploads, name)
    service = GenerationService(cache=ModelCache(load=CountingLoader()))
    with pytest.raises(UserError) as caught:
        service.check(Request(str(upload)))
    assert message_for_upload(caught.value, upload) == expected
    assert str(uploads) not in expected  # the temporary folder never shows


def test_the_page_options_are_generate_options():
    service = GenerationService(cache=ModelCache(load=CountingLoader()))
    recipe, pre = service.check(Request(EXAMPLE, "tiny", steps=3, seed=11, mesh=True))
    model = recipe.model
    assert (model.sampler.steps, model.seed, model.output.mesh) == (3, 11, True)
    assert pre.image.shape[-1] == recipe.generator_config.image_size
    assert service.recipe_defaults("tiny") == (4, 0)  # the slider and seed field start here
    assert "tiny" in service.recipe_choices()


def test_models_load_once_and_every_result_is_the_file_set_generate_writes(tmp_path, monkeypatch, capsys):
    loader = CountingLoader()
    service = GenerationService("tiny", tmp_path / "app", ModelCache(load=loader))
    steps: list[tuple[int, int, tuple | None]] = []
    first = service.run(Request(EXAMPLE, steps=3, seed=5), lambda i, n, view: steps.append((i, n, None if view is None else view.shape)))
    again = service.run(Request(EXAMPLE, steps=3, seed=5))
    other = service.run(Request(EXAMPLE, steps=2, seed=6, intermediates=True))
    assert loader.calls == ["tiny"]  # one load serves every request with the recipe

    # every sampling step is reported; steps that reconstructed carry a preview grid of 8 views
    assert [(i, n) for i, n, _ in steps] == [(0, 3), (1, 3), (2, 3)]
    size = CountingLoader.pipe.generator.image_size
    assert steps[0][2] == (2 * size + 6, 4 * size + 10, 3)

    # the same files as `ouroboros3d generate` with the same options, also from the reused models
    monkeypatch.chdir(tmp_path)
    assert main(["generate", EXAMPLE, "--recipe", "tiny", "--steps", "3", "--seed", "5", "-o", "cli", "-q"]) == 0
    capsys.readouterr()
    reference = tmp_path / "cli" / "toy-object"
    assert first.folder == tmp_path / "app" / "0001" / "toy-object"
    names = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    assert first.files == again.files == names
    for name in names:
        if name.name != "manifest.json":
            assert (first.folder / name).read_bytes() == (reference / name).read_bytes() == (again.folder / name).read_bytes(), name
    assert first.viewer_model == first.folder / "model.ply" and first.path("video") == first.folder / "turntable.mp4"

    # a request's own options: fewer steps, another seed, every step's maps saved
    assert yaml.safe_load((other.folder / "recipe.yaml").read_text())["sampler"]["steps"] == 2
    assert any(str(f).startswith("steps/") for f in other.files)
    assert (other.folder / "views.png").read_bytes() != (first.folder / "views.png").read_bytes()


def test_the_cache_keeps_capacity_recipes_and_drops_the_least_recent():
    from ouroboros_core.recipe import load_recipe

    recipe = load_recipe("tiny")
    loader = CountingLoader()
    cache = ModelCache(capacity=2, load=loader)
    for key in ["a", "b", "a", "c", "b", "a"]:  # c evicts b (a was used later), b evicts a, a evicts c
        cache.pipeline(key, recipe)
    assert loader.calls == ["tiny"] * 5
    assert list(cache.loaded) == ["b", "a"]


def test_app_without_gradio_and_on_a_taken_port_are_one_line_errors(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot serve on 127.0.0.1:{port}: the port is in use"):
            serve(port=port, block=False)
    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(UserError, match=r"pip install 'ouroboros3d\[app\]'"):
        import_gradio()
