"""Mesh files through trimesh: .glb, .obj (+ .mtl and texture .png) and .ply.

Every file is written atomically (``io/atomic.py``). Vertex colours are stored as 8-bit RGBA;
a texture is stored as an 8-bit PNG (inside the .glb, or next to the .obj as ``STEM.png``
referenced by ``STEM.mtl``, so several meshes can share a folder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write


def _to_uint8(values: torch.Tensor) -> np.ndarray:
    return (values.detach().to("cpu", torch.float64).clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def export_mesh(
    path: str | Path,
    vertices: torch.Tensor,
    faces: torch.Tensor,
    vertex_colors: torch.Tensor | None = None,
    uvs: torch.Tensor | None = None,
    texture: torch.Tensor | None = None,
) -> Path:
    """Write one mesh (``vertices (Nv, 3)``, ``faces (F, 3)``, optional ``vertex_colors
    (Nv, 3)`` in [0, 1], or ``uvs (Nv, 2)`` with ``texture (Ht, Wt, 3)``); the format
    follows the extension of ``path``."""
    import trimesh
    from PIL import Image

    path = Path(path)
    mesh = trimesh.Trimesh(
        vertices=vertices.detach().cpu().double().numpy(), faces=faces.detach().cpu().numpy(), process=False
    )
    if texture is not None:
        material = trimesh.visual.material.SimpleMaterial(
            image=Image.fromarray(_to_uint8(texture)), diffuse=(255, 255, 255, 255), name=path.stem
        )
        mesh.visual = trimesh.visual.TextureVisuals(uv=uvs.detach().cpu().double().numpy(), material=material)
    elif vertex_colors is not None:
        rgb = _to_uint8(vertex_colors)
        mesh.visual.vertex_colors = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1)

    files: dict[Path, bytes] = {}
    if path.suffix.lower() == ".obj":
        from trimesh.exchange.obj import export_obj

        text, extra = export_obj(mesh, include_texture=True, return_texture=True, mtl_name=f"{path.stem}.mtl")
        files.update({path.parent / name: data for name, data in extra.items()})
        files[path] = text.encode()
    else:
        files[path] = mesh.export(file_type=path.suffix.lower().lstrip("."))
    for target, data in files.items():  # the main file last: it names the others
        if target != path:
            with atomic_write(target) as tmp:
                tmp.write_bytes(data)
    with atomic_write(path) as tmp:
        tmp.write_bytes(files[path])
    return path
