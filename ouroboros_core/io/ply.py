"""Gaussian splats as .ply files in the standard 3D Gaussian Splatting layout.

One ``vertex`` element, float32 properties in this order (the order of graphdeco's original
3DGS ``save_ply``; the bracketed ones are left out by the compact layout LGM writes)::

    x, y, z, [nx, ny, nz,] f_dc_0, f_dc_1, f_dc_2, [f_rest_0 .. f_rest_44,]
    opacity, scale_0, scale_1, scale_2, rot_0, rot_1, rot_2, rot_3

Values are stored in 3DGS's pre-activation form: ``f_dc = (rgb - 0.5) / C0`` (the degree-0
spherical-harmonic coefficient, ``C0 = 0.28209479177387814``), ``opacity = logit(o)`` with
``o`` clamped to [1e-6, 1 - 1e-6], ``scale = ln(s + 1e-8)``, and the quaternion ``wxyz``
written as given (not renormalised). The bracketed normals and higher-order SH fields are
zeros. They are written by default (``full_3dgs_layout=True``), because readers built for
graphdeco's files (its SIBR viewer, tools that index properties by position) expect the full
degree-3 layout; ``full_3dgs_layout=False`` writes LGM's compact layout (4.4x smaller), which
viewers that look properties up by name also read. Files are written atomically
(``io/atomic.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .atomic import atomic_write

SH_C0 = 0.28209479177387814
_N_SH_REST = 45  # degree-3 SH: 15 coefficients x 3 colours


def write_gaussians_ply(
    path: str | Path,
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    full_3dgs_layout: bool = True,
) -> Path:
    """Write one cloud (``means (N, 3)``, ``quats (N, 4)`` wxyz, ``scales (N, 3)``,
    ``opacities (N,)``, ``colors (N, 3)`` rgb in [0, 1], all post-activation)."""
    from plyfile import PlyData, PlyElement

    path = Path(path)
    as_np = lambda t: t.detach().to("cpu", torch.float64).numpy()  # noqa: E731
    means, quats, scales, opacities, colors = map(as_np, (means, quats, scales, opacities, colors))
    n = means.shape[0]
    o = np.clip(opacities, 1e-6, 1 - 1e-6)
    columns: list[tuple[str, np.ndarray]] = [("x", means[:, 0]), ("y", means[:, 1]), ("z", means[:, 2])]
    if full_3dgs_layout:
        columns += [(name, np.zeros(n)) for name in ("nx", "ny", "nz")]
    columns += [(f"f_dc_{i}", (colors[:, i] - 0.5) / SH_C0) for i in range(3)]
    if full_3dgs_layout:
        columns += [(f"f_rest_{i}", np.zeros(n)) for i in range(_N_SH_REST)]
    columns.append(("opacity", np.log(o / (1 - o))))
    columns += [(f"scale_{i}", np.log(scales[:, i] + 1e-8)) for i in range(3)]
    columns += [(f"rot_{i}", quats[:, i]) for i in range(4)]

    data = np.empty(n, dtype=[(name, "f4") for name, _ in columns])
    for name, values in columns:
        data[name] = values
    with atomic_write(path) as tmp:
        PlyData([PlyElement.describe(data, "vertex")]).write(str(tmp))
    return path


def read_gaussians_ply(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a 3DGS .ply back into post-activation float32 tensors: ``means (N, 3)``,
    ``quats (N, 4)`` (as stored), ``scales (N, 3)``, ``opacities (N,)``, ``colors (N, 3)``.

    Only the degree-0 colour is used; ``f_rest_*`` coefficients, if any, are ignored.
    """
    from plyfile import PlyData

    path = Path(path)
    try:
        ply = PlyData.read(str(path))
        vertex = ply["vertex"]
    except FileNotFoundError:
        raise InputError(f"no such file: {path}", hint="check the path") from None
    except Exception as exc:  # plyfile raises several types for malformed files
        raise InputError(f"{path} is not a readable .ply with a 'vertex' element ({exc})", hint="pass a 3D Gaussian Splatting .ply") from None
    names = set(vertex.data.dtype.names)
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [name for name in required if name not in names]
    if missing:
        raise InputError(
            f"{path} lacks the 3D Gaussian properties {', '.join(missing)}",
            hint="pass a .ply written by a 3D Gaussian Splatting tool (x, y, z, f_dc_*, opacity, scale_*, rot_*)",
        )
    column = lambda *keys: torch.from_numpy(np.stack([np.asarray(vertex[k], dtype=np.float32) for k in keys], -1))  # noqa: E731
    return {
        "means": column("x", "y", "z"),
        "quats": column("rot_0", "rot_1", "rot_2", "rot_3"),
        "scales": torch.exp(column("scale_0", "scale_1", "scale_2")),
        "opacities": torch.sigmoid(column("opacity")[:, 0]),
        "colors": column("f_dc_0", "f_dc_1", "f_dc_2") * SH_C0 + 0.5,
    }
