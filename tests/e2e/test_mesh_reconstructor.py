"""The mesh slot works: a reconstructor that outputs a Mesh runs through the recursive sampler
end to end, its renders feed RGB and CCM maps back, and the result exports to .glb."""

from __future__ import annotations

import numpy as np
import torch
import trimesh
from torch import nn

from ouroboros_core.components import ReconstructorConfig
from ouroboros_core.interfaces import Reconstructor
from ouroboros_core.mesh import Mesh
from ouroboros_core.recipe import MapsConfig, SamplerConfig
from ouroboros_core.sampler import RecursiveSampler
from tests.core.toys import ToyEncoder, ToyEncoderConfig, ToyGenerator, toy_cameras


class MeshReconstructorConfig(ReconstructorConfig):
    input_views: list[int] | None = [0, 2]
    representation = "mesh"


class IcosphereReconstructor(Reconstructor):
    """An icosphere whose radius is learnable and whose colour is the views' mean colour."""

    def __init__(self):
        super().__init__()
        self.config = MeshReconstructorConfig()
        self.radius = nn.Parameter(torch.tensor(0.45))
        self.calls = 0

    def reconstruct(self, images, cameras, sigma=None):
        self.calls += 1
        base = Mesh.icosphere(radius=1.0, subdivisions=2, batch_size=images.shape[0])
        colors = images.mean(dim=(1, 3, 4)).clamp(0, 1)  # (B, 3)
        return Mesh(
            vertices=[v * self.radius for v in base.vertices],
            faces=base.faces,
            vertex_colors=[c.expand(len(v), 3) for c, v in zip(colors, base.vertices)],
        )


def test_mesh_reconstructor_runs_the_recursive_loop(tmp_path):
    torch.manual_seed(0)
    generator = ToyGenerator()
    reconstructor = IcosphereReconstructor()
    encoders = [ToyEncoder(ToyEncoderConfig(map_kind="rgb"), record=True), ToyEncoder(ToyEncoderConfig(map_kind="ccm"), record=True)]
    sampler = RecursiveSampler(generator, reconstructor, encoders, SamplerConfig(steps=3, sigma_max=2.0), MapsConfig())
    cams = toy_cameras(num_views=4)
    out = sampler(torch.full((1, 3, 16, 16), 0.5), cams, generator=torch.Generator().manual_seed(0))

    assert isinstance(out.representation, Mesh)
    assert reconstructor.calls == 4  # one per step + the final reconstruction of the clean views
    rgb_maps, ccm_maps = encoders[0].seen, encoders[1].seen
    assert rgb_maps[0].abs().sum() == 0 and ccm_maps[0].abs().sum() == 0  # zero maps at step 0
    # from step 1 on, the CCM is the sphere's canonical coordinates: at the centre pixel of the
    # view at azimuth 0 the visible surface point is (0, 0, r), i.e. (0.5, 0.5, (r + 1) / 2)
    ccm = ccm_maps[1][0, 0, :, 7:9, 7:9].mean(dim=(1, 2))
    r = reconstructor.radius.item()
    np.testing.assert_allclose(ccm.numpy(), [0.5, 0.5, (r + 1) / 2], atol=0.03)
    # the rendered RGB maps show the mesh on a white background
    assert rgb_maps[1][0, 0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]

    path = out.representation.save(tmp_path / "mesh.glb")
    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.vertices) == len(out.representation.vertices[0])
