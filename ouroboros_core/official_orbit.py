"""The camera orbit of the official Ouroboros3D setup, as plain numbers (no torch import).

One home for these facts: :class:`ouroboros_core.cameras.Cameras` builds its official cameras
from them and the recipe's ``cameras:`` defaults refer to them (reference:
official-ouroboros3d.md §1.3, the shipped ``hyper/*.npy`` files).
"""

from __future__ import annotations

#: Azimuths in degrees (from +z towards +x) of the 8 views: 16-view orbit indices
#: linspace(0, 15, 8).astype(int) at 22.5 degrees, hence 337.5 for the last view.
OFFICIAL_AZIMUTHS: tuple[float, ...] = (0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 337.5)
#: Distance of every camera from the origin (elevation 0).
OFFICIAL_RADIUS = 1.7416968
#: Field of view in degrees, both axes: Blender's 50 mm lens on a 36 mm sensor, 2 atan(18/50).
OFFICIAL_FOV_DEG = 39.59775
