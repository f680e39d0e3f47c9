"""An explicit small recipe for end-to-end content tests: the reference plugins at their tiny
presets with random weights, 8 views at 32², every size written out here, so the tests do not
depend on what the shipped ``tiny`` recipe holds (its sizes and weights change with training)."""

from __future__ import annotations

from pathlib import Path

SMALL_RECIPE = """\
name: small
generator: {type: svd, preset: tiny, config: {num_views: 8, image_size: 32}}
reconstructor: {type: lgm, preset: tiny, config: {input_views: [0, 2, 4, 6], near_plane: 0.2}}
feedback:
  - {type: adapter, preset: tiny, config: {map_kind: rgb}}
  - {type: adapter, preset: tiny, config: {map_kind: ccm}}
maps: {ccm: canonical}
sampler: {steps: 4, mode: joint}
device: cpu
seed: 5
output: {video_frames: 6, video_size: 32}
trainer:
  data: {kind: procedural, num_objects: 2}
"""


def write_small_recipe(folder: Path) -> Path:
    path = Path(folder) / "small.yaml"
    path.write_text(SMALL_RECIPE)
    return path
