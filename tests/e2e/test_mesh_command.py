"""``ouroboros3d mesh`` and ``generate --mesh`` end to end: the .glb files read back by trimesh."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

trimesh = pytest.importorskip("trimesh")
pytest.importorskip("skimage")

from ouroboros_core.cli import main  # noqa: E402
from ouroboros_core.gaussians import GaussianCloud  # noqa: E402
from ouroboros_core.mesh_from_gaussians import fibonacci_directions, mesh_from_gaussians  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_generate import FAST, object_rgba  # noqa: E402

#: the tiny plugins with random weights at 64² (the shipped `tiny` recipe is the trained model)
TINY_RANDOM = str(Path(__file__).resolve().parents[1] / "recipes" / "tiny-random.yaml")

SMALL = ["--resolution", "48", "--views", "24"]
RADIUS = 0.35


def sphere_ply(path: Path, n: int = 2000, opacity: float = 0.95) -> Path:
    d = fibonacci_directions(n).float()
    scale = 0.6 * math.sqrt(4 * math.pi * RADIUS**2 / n)
    cloud = GaussianCloud(
        (d * RADIUS)[None],
        torch.tensor([1.0, 0, 0, 0]).expand(1, n, 4).clone(),
        torch.full((1, n, 3), scale),
        torch.full((1, n), opacity),
        (0.5 + 0.4 * d)[None],
    )
    return cloud.save(path)


def load_glb(path: Path) -> "trimesh.Trimesh":
    scene = trimesh.load(path)
    (mesh,) = scene.geometry.values() if isinstance(scene, trimesh.Scene) else (scene,)
    return mesh


def error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_mesh_command_writes_a_closed_coloured_glb(tmp_path, capsys):
    ply = sphere_ply(tmp_path / "model.ply")
    assert main(["mesh", str(ply), "-o", str(tmp_path / "sphere.glb"), "--faces", "3000"] + SMALL) == 0
    out = capsys.readouterr().out
    assert "sphere.glb" in out and "faces" in out
    mesh = load_glb(tmp_path / "sphere.glb")
    assert 1000 < len(mesh.faces) <= 3000
    assert mesh.is_watertight
    # voxel of the 48-point grid: the volume spans the Gaussians plus margins, ~0.85 wide
    radial = np.linalg.norm(mesh.vertices, axis=1) - RADIUS
    assert np.abs(radial).mean() < 0.02, np.abs(radial).mean()
    expected = 0.5 + 0.4 * mesh.vertices / np.linalg.norm(mesh.vertices, axis=1, keepdims=True)
    assert np.abs(mesh.visual.vertex_colors[:, :3] / 255.0 - expected).mean() < 0.03


def test_mesh_command_default_output_is_beside_the_ply_and_is_not_overwritten(tmp_path, capsys):
    ply = sphere_ply(tmp_path / "model.ply", n=800)
    assert main(["mesh", str(ply)] + SMALL) == 0
    glb = tmp_path / "model.glb"
    before = glb.read_bytes()
    assert load_glb(glb).is_watertight
    assert main(["mesh", str(ply)] + SMALL) == 2
    (line,) = error_lines(capsys)
    assert "already exists" in line and "--overwrite" in line and glb.read_bytes() == before
    assert main(["mesh", str(ply), "--overwrite", "--faces", "500"] + SMALL) == 0
    assert len(load_glb(glb).faces) <= 500


def test_mesh_command_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert main(["mesh", str(tmp_path / "missing.ply"), "-o", str(tmp_path / "x.glb")]) == 2
    (line,) = error_lines(capsys)
    assert "missing.ply" in line and "not found" in line

    faint = sphere_ply(tmp_path / "faint.ply", n=300, opacity=0.01)
    assert main(["mesh", str(faint)] + SMALL) == 2
    (line,) = error_lines(capsys)
    assert "transparent" in line and not (tmp_path / "faint.glb").exists()

    ply = sphere_ply(tmp_path / "model.ply", n=300)
    assert main(["mesh", str(ply), "-o", str(tmp_path / "model.stl")]) == 2
    (line,) = error_lines(capsys)
    assert ".stl" in line and ".glb" in line

    (tmp_path / "notply.ply").write_text("hello")
    assert main(["mesh", str(tmp_path / "notply.ply")]) == 2
    (line,) = error_lines(capsys)
    assert "notply.ply" in line
    assert not list(tmp_path.glob("*.glb"))


def test_generate_mesh_writes_model_glb_equal_to_the_api_result(tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "obj.png"
    Image.fromarray(object_rgba()).save(image)
    settings = FAST + ["output.mesh_resolution=48", "output.mesh_views=24", "output.mesh_faces=2000"]
    args = ["generate", str(image), "--recipe", TINY_RANDOM, "-o", str(tmp_path / "out"), "-q", "--seed", "3", "--mesh"]
    assert main(args + [a for s in settings for a in ("--set", s)]) == 0
    folder = tmp_path / "out" / "obj"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["files"]["mesh"] == "model.glb" and "save.mesh" in manifest["timings_s"]
    saved = json.loads(json.dumps(manifest))
    assert saved["warnings"] == []
    glb = load_glb(folder / "model.glb")
    # the same Gaussians (read back from model.ply) meshed through the API give the same mesh
    cloud = GaussianCloud.load_ply(folder / "model.ply")
    api = mesh_from_gaussians(cloud, resolution=48, views=24, faces=2000)
    assert len(glb.faces) == len(api.faces[0]) <= 2000
    np.testing.assert_allclose(glb.vertices, api.vertices[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(glb.visual.vertex_colors[:, :3] / 255.0, api.vertex_colors[0].numpy(), atol=1.5 / 255)
    # the recipe saved beside the outputs records the setting
    assert "mesh: true" in (folder / "recipe.yaml").read_text()


def test_generate_mesh_is_off_by_default_and_checked_before_models_load(tmp_path, capsys, monkeypatch):
    from ouroboros_core.recipe import load_recipe

    assert load_recipe(TINY_RANDOM).model.output.mesh is False
    import ouroboros_core.mesh_from_gaussians as mfg
    from ouroboros_core.errors import UserError

    def missing() -> None:
        raise mfg.MeshExportError("mesh export needs scikit-image (marching cubes), which is not installed", hint="pip install 'ouroboros3d[mesh]'")

    monkeypatch.setattr(mfg, "require_mesh_libraries", missing)
    import ouroboros_core.pipeline as pipeline

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(pipeline.ImageTo3DPipeline, "from_recipe", no_loading)
    from PIL import Image

    image = tmp_path / "obj.png"
    Image.fromarray(object_rgba()).save(image)
    assert main(["generate", str(image), "--recipe", TINY_RANDOM, "-o", str(tmp_path / "out"), "-q", "--mesh"]) == 2
    (line,) = error_lines(capsys)
    assert "scikit-image" in line and "ouroboros3d[mesh]" in line
    assert issubclass(mfg.MeshExportError, UserError)


def test_generate_mesh_of_transparent_gaussians_warns_and_keeps_the_rest(tmp_path):
    from dataclasses import replace

    from ouroboros_core.pipeline import ImageTo3DPipeline

    pipe = ImageTo3DPipeline.from_recipe(TINY_RANDOM, FAST + ["output.mesh=true", "output.mesh_resolution=32", "output.mesh_views=8"])
    result = pipe(object_rgba(), seed=3)
    rep = result.representation
    faint = replace(rep, opacities=torch.full_like(rep.opacities, 0.01), save_min_opacity=0.0)
    result = replace(result, representation=faint, warnings=list(result.warnings))
    folder = pipe.save(result, tmp_path / "obj")
    assert (folder / "model.ply").exists() and not (folder / "model.glb").exists()
    (warning,) = [w for w in result.warnings if "model.glb" in w]
    assert "transparent" in warning and "\n" not in warning
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "mesh" not in manifest["files"] and "save.mesh" in manifest["timings_s"]
    assert warning in manifest["warnings"]
