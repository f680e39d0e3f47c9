"""A differentiable pure-PyTorch Gaussian splatting rasterizer (the CPU backend).

It follows ``gsplat.rasterization`` (v1.5, "classic" mode) closely enough that both give the
same image for the same inputs, and it has the same functional shape: plain tensors in,
channels-last tensors out.

Conventions (the same as gsplat's):

- ``viewmats`` are world-to-camera matrices in the OpenCV convention (x right, y down,
  z forward; column vectors, ``x_cam = R x_world + t``); ``Ks`` are pixel intrinsics.
- Pixel ``(i, j)`` is sampled at its centre ``(j + 0.5, i + 0.5)``.
- Quaternions are ``wxyz`` and are normalised here; pass ``covars`` to use covariances built
  some other way (for example from un-normalised quaternions, see
  :func:`quat_scale_to_covariance`).

The math, step by step:

1. EWA projection: ``Sigma_2d = J W Sigma W^T J^T + eps2d I`` with the perspective Jacobian
   ``J`` evaluated at the camera-space mean, whose ``x/z`` and ``y/z`` are clamped to the
   field of view widened by 30 % (gsplat's ``1.3 tan(fov/2)`` guard against huge splats at
   the image border). Gaussians with ``z < near_plane`` or ``z > far_plane``, with opacity
   below 1/255, or with a degenerate 2D covariance are culled.
2. Each Gaussian's footprint is the box in which its alpha can reach 1/255:
   ``|dx| <= e sqrt(Sigma_xx)``, ``|dy| <= e sqrt(Sigma_yy)`` with
   ``e = sqrt(2 ln(255 o))`` (at most 3.33, gsplat's opacity-aware extent). The culling to
   tiles is therefore exact: a Gaussian never skipped by it could have changed a pixel.
3. Per pixel, front to back in order of camera-space depth of the means:
   ``alpha = min(0.999, o exp(-1/2 d^T Sigma_2d^-1 d))``, skipped when below 1/255;
   compositing stops *before* the Gaussian that would bring the transmittance ``T`` to
   1e-4 or below (implemented as a mask on the running product, so it stays differentiable).
   ``color = sum w_i c_i + T_final * background``, ``alpha = sum w_i``,
   ``depth = sum w_i z_i`` (accumulated, not normalised; gsplat's "D" mode).

Memory is bounded: the image is cut into square tiles, each tile only sees the Gaussians
whose footprint touches it, and tiles are processed in groups and their Gaussian lists in
chunks, so the largest intermediate has about ``max_chunk_elements`` entries. Tiles whose
pixels have all stopped are dropped from later chunks. With autograd enabled the
intermediates of every chunk are kept for the backward pass, so memory then grows with the
number of tile-Gaussian pairs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ALPHA_THRESHOLD = 1.0 / 255.0
LOG_ALPHA_THRESHOLD = math.log(ALPHA_THRESHOLD)
ALPHA_MAX = 0.999
TRANSMITTANCE_MIN = 1e-4
MAX_EXTENT = 3.33  # gsplat's footprint extent in standard deviations

__all__ = ["rasterize_gaussians", "quat_to_rotmat", "quat_scale_to_covariance", "project_gaussians"]


def quat_to_rotmat(quats: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` from ``wxyz`` quaternions ``(..., 4)``.

    With ``normalize=False`` the polynomial is evaluated on the raw quaternion, which is not
    a rotation unless ``|q| = 1``; the original 3DGS CUDA rasterizer does exactly this, and
    models trained against it (old LGM weights, the published Ouroboros3D reconstructor)
    depend on it.
    """
    if normalize:
        quats = F.normalize(quats, dim=-1)
    w, x, y, z = quats.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, -1).reshape(*quats.shape[:-1], 3, 3)


def quat_scale_to_covariance(quats: torch.Tensor, scales: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """World-space covariances ``R S S^T R^T`` ``(..., 3, 3)`` from quaternions and scales."""
    M = quat_to_rotmat(quats, normalize) * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def project_gaussians(
    means: torch.Tensor,
    covars: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EWA projection of ``B`` clouds into ``C`` cameras each.

    ``means`` ``(B, N, 3)``, ``covars`` ``(B, N, 3, 3)``, ``viewmats`` ``(B, C, 4, 4)``,
    ``Ks`` ``(B, C, 3, 3)``. Returns ``means2d`` ``(B, C, N, 2)`` in pixels, ``cov2d``
    ``(B, C, N, 2, 2)`` including the ``eps2d`` low-pass, ``depths`` ``(B, C, N)`` (camera z)
    and ``valid_z`` ``(B, C, N)``, True where the depth is positive. Where it is not, the
    other outputs are finite placeholders (so that gradients never meet ``0 * inf``).
    """
    R = viewmats[..., :3, :3]
    t = viewmats[..., :3, 3]
    mc = torch.einsum("bcij,bnj->bcni", R, means) + t[:, :, None, :]
    z = mc[..., 2]
    valid_z = z > 0
    z_safe = torch.where(valid_z, z, torch.ones_like(z))
    cov_c = R[:, :, None] @ covars[:, None] @ R.transpose(-1, -2)[:, :, None]

    fx, fy = Ks[..., 0, 0, None], Ks[..., 1, 1, None]
    cx, cy = Ks[..., 0, 2, None], Ks[..., 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    u = mc[..., 0] / z_safe
    v = mc[..., 1] / z_safe
    u_clamped = torch.minimum(torch.maximum(u, -(cx / fx + 0.3 * tan_fovx)), (width - cx) / fx + 0.3 * tan_fovx)
    v_clamped = torch.minimum(torch.maximum(v, -(cy / fy + 0.3 * tan_fovy)), (height - cy) / fy + 0.3 * tan_fovy)
    zero = torch.zeros_like(z_safe)
    J = torch.stack(
        [fx / z_safe, zero, -fx * u_clamped / z_safe, zero, fy / z_safe, -fy * v_clamped / z_safe], -1
    ).reshape(*z.shape, 2, 3)
    cov2d = J @ cov_c @ J.transpose(-1, -2)
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    means2d = torch.stack([fx * u + cx, fy * v + cy], -1)
    return means2d, cov2d, z, valid_z


def _pixel_features(tile_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Monomials ``(px^2, px py, py^2, px, py, 1)`` of the pixel centres of one tile,
    relative to the tile centre, ``(tile_size^2, 6)``, row-major over the tile's pixels."""
    r = torch.arange(tile_size, dtype=dtype, device=device) + 0.5 - tile_size / 2
    py, px = torch.meshgrid(r, r, indexing="ij")
    px, py = px.reshape(-1), py.reshape(-1)
    return torch.stack([px * px, px * py, py * py, px, py, torch.ones_like(px)], -1)


def rasterize_gaussians(
    means: torch.Tensor,
    quats: torch.Tensor | None,
    scales: torch.Tensor | None,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    backgrounds: torch.Tensor | None = None,
    covars: torch.Tensor | None = None,
    alpha_max: float = ALPHA_MAX,
    tile_size: int = 8,
    chunk_size: int = 32,
    max_chunk_elements: int = 1 << 21,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render Gaussians into cameras (the argument names and layout follow gsplat).

    Args:
        means: ``(..., N, 3)`` world-space centres.
        quats: ``(..., N, 4)`` ``wxyz`` rotations (normalised here); ignored with ``covars``.
        scales: ``(..., N, 3)`` standard deviations along the rotated axes; ignored with ``covars``.
        opacities: ``(..., N)`` in [0, 1].
        colors: ``(..., N, D)`` any number of channels (RGB, or features such as coordinates).
        viewmats: ``(..., C, 4, 4)`` world-to-camera, OpenCV.
        Ks: ``(..., C, 3, 3)`` pixel intrinsics.
        width, height: image size in pixels.
        near_plane, far_plane: Gaussians whose camera-space z lies outside are culled.
        eps2d: low-pass added to the 2D covariance diagonal (gsplat's 0.3).
        backgrounds: ``(..., C, D)`` (or broadcastable) colour behind the Gaussians; ``None`` means black.
        covars: ``(..., N, 3, 3)`` world covariances used instead of ``quats``/``scales``.
        alpha_max: clamp of each splat's alpha at a pixel (gsplat: 0.999; the original 3DGS
            rasterizer and LGM's fork of it: 0.99).
        tile_size, chunk_size, max_chunk_elements: speed/memory knobs; results do not depend on them.

    Returns:
        ``colors`` ``(..., C, H, W, D)``, ``alphas`` ``(..., C, H, W, 1)`` and the
        accumulated depth ``sum_i w_i z_i`` ``(..., C, H, W, 1)``.
    """
    lead = means.shape[:-2]
    N = means.shape[-2]
    C = viewmats.shape[-3]
    D = colors.shape[-1]
    Bf = math.prod(lead)
    means_f = means.reshape(Bf, N, 3)
    if covars is None:
        if quats is None or scales is None:
            raise ValueError("pass either quats and scales, or covars")
        covars = quat_scale_to_covariance(quats, scales)
    means2d, cov2d, depths, valid = project_gaussians(
        means_f, covars.reshape(Bf, N, 3, 3), viewmats.reshape(Bf, C, 4, 4), Ks.reshape(Bf, C, 3, 3), width, height, eps2d
    )
    opac = opacities.reshape(Bf, 1, N).expand(Bf, C, N)
    a, b, c = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det = a * c - b * b
    with torch.no_grad():
        extent = torch.sqrt(2 * torch.log(opac.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp_max(MAX_EXTENT)
        rx = extent * a.clamp_min(0).sqrt()
        ry = extent * c.clamp_min(0).sqrt()
        mx, my = means2d[..., 0], means2d[..., 1]
        valid = (
            valid
            & (depths >= near_plane)
            & (depths <= far_plane)
            & (opac >= ALPHA_THRESHOLD)
            & (det > 0)
            & (mx + rx > 0)
            & (mx - rx < width)
            & (my + ry > 0)
            & (my - ry < height)
        )
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conic = torch.stack([c / det_safe, -b / det_safe, a / det_safe], -1)  # inverse of cov2d

    tiles_x = -(-width // tile_size)
    tiles_y = -(-height // tile_size)
    n_tiles = tiles_x * tiles_y
    n_images = Bf * C
    P = tile_size * tile_size
    out_ch = D + 2  # colour, depth, alpha (as the sum of weights)

    # ---- the (image, Gaussian) entries that survive culling, in front-to-back order
    flat_valid = valid.reshape(-1)
    entry = flat_valid.nonzero().squeeze(1)  # index into (image, gaussian) = image * N + gaussian
    with torch.no_grad():
        order = torch.sort(depths.reshape(-1)[entry], stable=True).indices
    entry = entry[order]
    image_of_entry = entry // N
    gauss_of_entry = entry % N
    b_of_entry = image_of_entry // C

    # ---- tile ranges of each entry and the (tile, entry) pairs
    with torch.no_grad():
        ex = mx.reshape(-1)[entry]
        ey = my.reshape(-1)[entry]
        erx = rx.reshape(-1)[entry]
        ery = ry.reshape(-1)[entry]
        # pixel j is touched when |j + 0.5 - mx| <= rx
        tx0 = (torch.ceil(ex - erx - 0.5).clamp(0, width - 1) // tile_size).long()
        tx1 = (torch.floor(ex + erx - 0.5).clamp(0, width - 1) // tile_size).long()
        ty0 = (torch.ceil(ey - ery - 0.5).clamp(0, height - 1) // tile_size).long()
        ty1 = (torch.floor(ey + ery - 0.5).clamp(0, height - 1) // tile_size).long()
        nx = (tx1 - tx0 + 1).clamp_min(0)
        ny = (ty1 - ty0 + 1).clamp_min(0)
        n_pairs = nx * ny
        pair_entry = torch.repeat_interleave(torch.arange(len(entry), device=means.device), n_pairs)
        first = torch.cumsum(n_pairs, 0) - n_pairs
        local = torch.arange(len(pair_entry), device=means.device) - first[pair_entry]
        ptx = tx0[pair_entry] + local % nx[pair_entry]
        pty = ty0[pair_entry] + local // nx[pair_entry]
        key = image_of_entry[pair_entry] * n_tiles + pty * tiles_x + ptx
        key, perm = torch.sort(key, stable=True)  # stable: keeps depth order inside a tile
        pair_entry = pair_entry[perm]
        counts = torch.bincount(key, minlength=n_images * n_tiles)
        starts = torch.cumsum(counts, 0) - counts

    # ---- per-entry parameters, with one extra "dummy" row that never contributes
    dtype = means.dtype
    # one row per entry: [mean x, mean y, conic a, b, c, log opacity, colour..., depth, 1]
    e_depth = depths.reshape(-1)[entry, None]
    table = torch.cat(
        [
            means2d.reshape(-1, 2)[entry],
            conic.reshape(-1, 3)[entry],
            torch.log(opac.reshape(-1)[entry, None]),
            colors.reshape(Bf, N, D)[b_of_entry, gauss_of_entry],
            e_depth,
            torch.ones_like(e_depth),
        ],
        -1,
    )
    dummy_row = torch.zeros(1, table.shape[1], dtype=dtype, device=table.device)
    dummy_row[0, 5] = -1e4  # log opacity: alpha = exp(-1e4) = 0
    table = torch.cat([table, dummy_row])
    dummy = len(entry)

    # tile centres in pixels
    with torch.no_grad():
        tile_ids = torch.arange(n_images * n_tiles, device=means.device) % n_tiles
        tcx = ((tile_ids % tiles_x) * tile_size + tile_size / 2).to(dtype)
        tcy = ((tile_ids // tiles_x) * tile_size + tile_size / 2).to(dtype)
    features = _pixel_features(tile_size, dtype, means.device)

    group_ids: list[torch.Tensor] = []
    group_sums: list[torch.Tensor] = []
    with torch.no_grad():
        busy = counts.nonzero().squeeze(1)
        busy = busy[torch.sort(counts[busy], descending=True, stable=True).indices]
    group = max(1, max_chunk_elements // (P * chunk_size))
    for g0 in range(0, len(busy), group):
        tiles = busy[g0 : g0 + group]
        acc = torch.zeros(len(tiles), P, out_ch, dtype=dtype, device=means.device)
        slot = torch.arange(len(tiles), device=means.device)  # rows of ``acc`` still compositing
        T = torch.ones(len(tiles), P, dtype=dtype, device=means.device)
        k0 = 0
        while len(slot) > 0:
            active = tiles[slot]
            with torch.no_grad():
                k = torch.arange(k0, k0 + chunk_size, device=means.device)
                inside = k[None, :] < counts[active][:, None]
                pos = (starts[active][:, None] + k[None, :]).clamp_max(len(pair_entry) - 1)
                ids = torch.where(inside, pair_entry[pos], torch.full_like(pos, dummy))
            rows = table[ids]  # (A, K, 8 + D)
            mxl = rows[..., 0] - tcx[active][:, None]
            myl = rows[..., 1] - tcy[active][:, None]
            ca, cb, cc, logo = rows[..., 2], rows[..., 3], rows[..., 4], rows[..., 5]
            # log(alpha) before the clamp is a quadratic in the pixel position (relative to the tile centre)
            coeffs = torch.stack(
                [
                    -0.5 * ca,
                    -cb,
                    -0.5 * cc,
                    ca * mxl + cb * myl,
                    cb * mxl + cc * myl,
                    logo - (0.5 * ca * mxl * mxl + cb * mxl * myl + 0.5 * cc * myl * myl),
                ],
                1,
            )  # (A, 6, K)
            log_alpha = features @ coeffs  # (A, P, K)
            log_alpha.masked_fill_(log_alpha < LOG_ALPHA_THRESHOLD, -math.inf)  # skipped: alpha < 1/255
            alpha = log_alpha.exp_().clamp_max(alpha_max)
            one_minus = 1 - alpha
            T_incl = T[:, :, None] * torch.cumprod(one_minus, -1)
            w = alpha * (T_incl / one_minus)
            w.masked_fill_(T_incl <= TRANSMITTANCE_MIN, 0.0)  # compositing stopped before this Gaussian
            acc = acc.index_add(0, slot, w @ rows[..., 6:])  # (A, P, D + 2)
            T = T_incl[..., -1]
            k0 += chunk_size
            with torch.no_grad():
                go_on = (counts[active] > k0) & (T > TRANSMITTANCE_MIN).any(-1)
            slot = slot[go_on]
            T = T[go_on]
        group_ids.append(tiles)
        group_sums.append(acc)

    canvas = torch.zeros(n_images * n_tiles, P, out_ch, dtype=dtype, device=means.device)
    if group_sums:
        canvas = canvas.index_add(0, torch.cat(group_ids), torch.cat(group_sums))
    canvas = canvas.reshape(n_images, tiles_y, tiles_x, tile_size, tile_size, out_ch)
    canvas = canvas.permute(0, 1, 3, 2, 4, 5).reshape(n_images, tiles_y * tile_size, tiles_x * tile_size, out_ch)
    canvas = canvas[:, :height, :width]
    color, depth, alpha_out = canvas[..., :D], canvas[..., D : D + 1], canvas[..., D + 1 :]
    if backgrounds is not None:
        bg = backgrounds.to(dtype).expand(*lead, C, D).reshape(n_images, 1, 1, D)
        color = color + (1 - alpha_out) * bg
    shape = (*lead, C, height, width)
    return color.reshape(*shape, D), alpha_out.reshape(*shape, 1), depth.reshape(*shape, 1)
