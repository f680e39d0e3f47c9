"""Hook specifications of ouroboros3d (pluggy).

A plugin is a module (or object) named by an entry point in the ``ouroboros3d`` group that
implements one or both hooks below with ``@ouroboros_core.hookimpl``. Implementations may
accept a subset of the keyword arguments, so new arguments can be added without breaking
plugins. Importing the plugin module must not import torch: register :class:`ComponentSpec`
objects whose factories are ``"module:callable"`` strings.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "ouroboros3d"
ENTRY_POINT_GROUP = "ouroboros3d"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def ouroboros3d_register_components(register):
    """Register components: call ``register(spec)`` once per :class:`ComponentSpec`."""


@hookspec
def ouroboros3d_register_recipes(register):
    """Register shipped recipes: call ``register(path)`` with a ``.yaml`` file or a folder of them."""
