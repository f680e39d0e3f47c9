"""The tiny recipe end to end on the CPU: every output file, read back by a second tool."""

from __future__ import annotations

from pathlib import Path

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from plyfile import PlyData

from ouroboros_core.cli import main
from ouroboros_core.gaussians import GaussianCloud
from ouroboros_core.pipeline import ImageTo3DPipeline

#: the tiny plugins with random weights at 64² (the shipped `tiny` recipe is the trained model)
TINY_RANDOM = str(Path(__file__).resolve().parents[1] / "recipes" / "tiny-random.yaml")

FAST = ["sampler.steps=2", "output.video_frames=6", "output.video_size=32"]


def object_rgba(size: int = 48) -> np.ndarray:
    y, x = np.mgrid[:size, :size] / size - 0.5
    inside = (x**2 + y**2) < 0.3**2
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 1] = (120 + 200 * x).clip(0, 255)
    rgba[..., 2] = 60
    rgba[..., 3] = 255 * inside
    return rgba


@pytest.fixture(scope="module")
def pipe() -> ImageTo3DPipeline:
    return ImageTo3DPipeline.from_recipe(TINY_RANDOM, FAST)


@pytest.fixture(scope="module")
def result(pipe):
    return pipe(object_rgba(), seed=3)


def test_outputs_are_complete_and_readable(pipe, result, tmp_path):
    folder = pipe.save(result, tmp_path / "obj")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["input.png", "manifest.json", "model.ply", "recipe.yaml", "turntable.mp4", "views", "views.png"]
    size = pipe.generator.image_size
    # 2 x 4 grid with 2 px padding
    assert Image.open(folder / "views.png").size == (4 * size + 5 * 2, 2 * size + 3 * 2)
    views = sorted((folder / "views").iterdir())
    assert len(views) == 8
    first = np.asarray(Image.open(views[0]), dtype=np.float32) / 255
    np.testing.assert_allclose(first, result.views[0].permute(1, 2, 0).clamp(0, 1).numpy(), atol=1 / 255 + 1e-6)
    # the video decodes to the configured number of frames at the configured size
    frames = iio.imread(folder / "turntable.mp4", plugin="pyav") if _has_pyav() else iio.imread(folder / "turntable.mp4")
    assert frames.shape[0] == 6 and frames.shape[1:3] == (32, 32)
    # the resolved recipe is a valid recipe again
    saved = yaml.safe_load((folder / "recipe.yaml").read_text())
    assert saved["sampler"]["steps"] == 2 and saved["generator"]["config"]["image_size"] == size
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["recipe"] == "tiny"
    assert set(manifest["random_weights"]) == {"svd", "lgm", "adapter"}
    assert "RANDOM" in manifest["note"]
    assert {"sampler.denoise", "sampler.reconstruct", "sampler.render", "total"} <= set(manifest["timings_s"])
    assert manifest["files"]["model"] == "model.ply"


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def test_ply_matches_the_gaussians_in_memory(pipe, result, tmp_path):
    path = result.representation.save(tmp_path / "g.ply", min_opacity=0.005)
    rep: GaussianCloud = result.representation
    keep = rep.opacities[0] >= 0.005
    vertex = PlyData.read(str(path))["vertex"]
    assert len(vertex) == int(keep.sum())
    xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], -1)
    np.testing.assert_allclose(xyz, rep.means[0][keep].numpy(), atol=1e-6)
    opacity = 1 / (1 + np.exp(-np.asarray(vertex["opacity"])))
    np.testing.assert_allclose(opacity, rep.opacities[0][keep].numpy(), atol=1e-5)
    rgb = np.stack([vertex[f"f_dc_{i}"] for i in range(3)], -1) * 0.28209479177387814 + 0.5
    np.testing.assert_allclose(rgb, rep.colors[0][keep].numpy(), atol=1e-5)


def test_same_seed_same_outputs_and_other_seed_differs(pipe, result):
    again = pipe(object_rgba(), seed=3)
    assert torch.equal(again.views, result.views)
    assert torch.equal(again.representation.means, result.representation.means)
    other = pipe(object_rgba(), seed=4)
    assert not torch.equal(other.views, result.views)


def test_joint_mode_reconstructs_every_step_and_two_stage_once():
    joint = ImageTo3DPipeline.from_recipe(TINY_RANDOM, FAST + ["sampler.final_reconstruction=last_step"])
    assert joint(object_rgba(), seed=0).manifest["num_reconstructions"] == 2
    two_stage = ImageTo3DPipeline.from_recipe(TINY_RANDOM, FAST + ["sampler.mode=none"])
    assert two_stage(object_rgba(), seed=0).manifest["num_reconstructions"] == 1


def test_interrupted_save_leaves_no_complete_looking_folder(pipe, result, tmp_path, monkeypatch):
    import ouroboros_core.io.video as video

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(video, "write_video", crash)
    with pytest.raises(KeyboardInterrupt):
        pipe.save(result, tmp_path / "obj")
    assert list(tmp_path.iterdir()) == []


def test_cli_generate_several_inputs(tmp_path, capsys):
    rgba = tmp_path / "a.png"
    Image.fromarray(object_rgba()).save(rgba)
    gray = tmp_path / "gray.png"
    Image.fromarray(object_rgba()[..., [0, 3]], mode="LA").save(gray)  # grayscale + alpha
    code = main(["generate", str(rgba), str(gray), "--recipe", TINY_RANDOM, "-o", str(tmp_path / "out"), "-q", "--seed", "1"] + [a for s in FAST for a in ("--set", s)])
    assert code == 0
    assert (tmp_path / "out" / "a" / "model.ply").is_file()
    assert (tmp_path / "out" / "gray" / "views.png").is_file()


def test_cli_checks_every_input_before_generating(tmp_path, capsys):
    good = tmp_path / "good.png"
    Image.fromarray(object_rgba()).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["generate", str(good), str(bad), "--recipe", TINY_RANDOM, "-o", str(tmp_path / "out"), "-q"]) == 2
    assert "bad.png" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing was generated for the good one either


def test_cli_generate_user_errors(tmp_path, capsys):
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG not really")
    assert main(["generate", str(corrupt), "--recipe", TINY_RANDOM, "-o", str(tmp_path / "out"), "-q"] + ["--set", FAST[0]]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "broken.png" in err[0]
    assert not (tmp_path / "out" / "broken").exists()
    rgb = tmp_path / "photo.jpg"
    Image.fromarray(object_rgba()[..., :3]).save(rgb)
    assert main(["generate", str(rgb), "--recipe", TINY_RANDOM, "-o", str(tmp_path / "out"), "-q"]) == 2
    assert "--no-remove-background" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "missing.png"), "--recipe", TINY_RANDOM]) == 2
    assert "not found" in capsys.readouterr().err


def test_intermediate_feedback_maps_are_saved(pipe, tmp_path):
    result = pipe(object_rgba(), seed=3, intermediates=True)
    # 2 steps, both reconstruct; each keeps the maps the next step sees
    assert sorted(result.intermediates) == ["step00_ccm", "step00_rgb", "step01_ccm", "step01_rgb"]
    assert result.intermediates["step00_rgb"].shape == (8, 3, 64, 64)
    folder = pipe.save(result, tmp_path / "obj")
    saved = sorted(p.name for p in (folder / "steps").iterdir())
    assert saved == ["step00_ccm.png", "step00_rgb.png", "step01_ccm.png", "step01_rgb.png"]
    grid = np.asarray(Image.open(folder / "steps" / "step01_rgb.png"))
    assert grid.shape == (2 * 64 + 6, 4 * 64 + 10, 3)


# ---------------------------------------------------------------- fault paths of the command
FAST_ARGS = ["--recipe", TINY_RANDOM, "-q"] + [a for s in FAST for a in ("--set", s)]


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if the command gets as far as building the models."""

    def refuse(*args, **kwargs):
        raise AssertionError("models were loaded before the error was found")

    monkeypatch.setattr(ImageTo3DPipeline, "from_recipe", classmethod(refuse))


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_cli_never_deletes_foreign_files_in_an_existing_output_folder(tmp_path, capsys, monkeypatch):
    image = tmp_path / "shapes.png"
    Image.fromarray(object_rgba()).save(image)
    out = tmp_path / "out"
    assert main(["generate", str(image), "-o", str(out), "--seed", "1"] + FAST_ARGS) == 0
    folder = out / "shapes"
    (folder / "notes.txt").write_text("my notes")
    (folder / "views" / "retouched.png").write_bytes(b"mine")
    before = (folder / "manifest.json").read_text()
    capsys.readouterr()

    with monkeypatch.context() as m:  # refused before any model loads, nothing touched
        m.setattr(ImageTo3DPipeline, "from_recipe", classmethod(lambda *a, **k: pytest.fail("models loaded")))
        assert main(["generate", str(image), "-o", str(out), "--seed", "2"] + FAST_ARGS) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and str(folder) in errors[0] and "notes.txt" in errors[0] and "--overwrite" in errors[0]
    assert (folder / "notes.txt").read_text() == "my notes" and (folder / "manifest.json").read_text() == before

    assert main(["generate", str(image), "-o", str(out), "--seed", "2", "--overwrite"] + FAST_ARGS) == 0
    assert (folder / "notes.txt").read_text() == "my notes"
    assert (folder / "views" / "retouched.png").read_bytes() == b"mine"
    assert json.loads((folder / "manifest.json").read_text())["seed"] == 2  # our own files were replaced
    assert len(list((folder / "views").glob("view_*.png"))) == 8
    assert sorted(p.name for p in out.iterdir()) == ["shapes"]  # no temporary folders left


@pytest.mark.parametrize("where", ["somefile", "somefile/sub"])
def test_cli_output_under_a_file_fails_before_models_load(tmp_path, capsys, no_model_loading, where):
    image = tmp_path / "shapes.png"
    Image.fromarray(object_rgba()).save(image)
    (tmp_path / "somefile").write_text("not a folder")
    assert main(["generate", str(image), "-o", str(tmp_path / where)] + FAST_ARGS) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and str(tmp_path / "somefile") in errors[0]
    assert (tmp_path / "somefile").read_text() == "not a folder"


def test_cli_output_where_nobody_can_write_fails_before_models_load(tmp_path, capsys, no_model_loading):
    """Under /proc no one can make a folder, root included (a chmod-ed folder stops only
    other users), so this runs as root too."""
    image = tmp_path / "shapes.png"
    Image.fromarray(object_rgba()).save(image)
    assert main(["generate", str(image), "-o", "/proc/ouroboros3d-out"] + FAST_ARGS) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and "cannot write into folder /proc " in errors[0]


def test_cli_bad_inputs_fail_before_models_load(tmp_path, capsys, no_model_loading):
    good = tmp_path / "good.png"
    Image.fromarray(object_rgba()).save(good)
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG not really")
    assert main(["generate", str(good), str(corrupt), "-o", str(tmp_path / "out")] + FAST_ARGS) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and "broken.png" in errors[0]
    folder = tmp_path / "pictures"
    folder.mkdir()
    assert main(["generate", str(folder), "-o", str(tmp_path / "out")] + FAST_ARGS) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and errors[0].startswith(f"error: {folder}: is a folder, not an image file")
    assert not (tmp_path / "out").exists()


def test_cli_ctrl_c_prints_interrupted_and_leaves_no_partial_result(tmp_path, capsys, monkeypatch):
    from ouroboros_core.sampler import RecursiveSampler

    first, second = tmp_path / "a.png", tmp_path / "b.png"
    for path in (first, second):
        Image.fromarray(object_rgba()).save(path)
    real_call, calls = RecursiveSampler.__call__, []

    def interrupted_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(RecursiveSampler, "__call__", interrupted_second)
    out = tmp_path / "out"
    assert main(["generate", str(first), str(second), "-o", str(out)] + FAST_ARGS) == 130
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["a"]  # b was never started; no temporary folder
    assert (out / "a" / "manifest.json").is_file()


def test_nonfinite_weights_are_reported_by_inspect_and_stop_generate(pipe, tmp_path, capsys):
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in pipe.reconstructor.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point() and v.dim() > 1)
    state[name].view(-1)[0] = float("nan")
    weights = tmp_path / "recon.safetensors"
    save_file(state, str(weights))
    assert main(["weights", "inspect", str(weights), "--component", "lgm", "--preset", "tiny"]) == 1
    out = capsys.readouterr().out
    assert f"1 tensor(s) hold NaN or infinite values: {name}" in out and "does NOT load" in out

    image = tmp_path / "shapes.png"
    Image.fromarray(object_rgba()).save(image)
    args = ["generate", str(image), "-o", str(tmp_path / "out"), "--set", f"reconstructor.weights={weights}"]
    assert main(args + FAST_ARGS) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1 and name in errors[0] and "NaN or infinite" in errors[0] and "reconstructor.weights (reconstructor 'lgm')" in errors[0]
    assert not (tmp_path / "out").exists()


def test_an_empty_3d_result_is_not_written_silently(tmp_path, capsys, monkeypatch):
    from ouroboros_core.sampler import RecursiveSampler

    real_call = RecursiveSampler.__call__

    def all_transparent(self, *args, **kwargs):
        out = real_call(self, *args, **kwargs)
        out.representation.opacities = torch.zeros_like(out.representation.opacities)
        return out

    monkeypatch.setattr(RecursiveSampler, "__call__", all_transparent)
    image = tmp_path / "shapes.png"
    Image.fromarray(object_rgba()).save(image)
    assert main(["generate", str(image), "-o", str(tmp_path / "out")] + FAST_ARGS) == 0
    err = capsys.readouterr().err
    assert f"warning: {image}: the 3D result is empty" in err and "no model.ply is written" in err
    folder = tmp_path / "out" / "shapes"
    assert not (folder / "model.ply").exists() and (folder / "views.png").is_file()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "model" not in manifest["files"] and "3D result is empty" in manifest["warnings"][0]


def test_generated_ply_has_the_full_original_3dgs_layout(pipe, result, tmp_path):
    folder = pipe.save(result, tmp_path / "obj")
    vertex = PlyData.read(str(folder / "model.ply"))["vertex"]
    graphdeco = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *[f"f_rest_{i}" for i in range(45)],
                 "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert list(vertex.data.dtype.names) == graphdeco
    assert all(vertex.data.dtype[name] == np.dtype("<f4") for name in graphdeco)
    assert np.all(vertex["nx"] == 0) and np.all(vertex["f_rest_0"] == 0) and len(vertex) > 0
