"""Entry module of a plugin with a missing dependency: importing it raises ModuleNotFoundError."""

import ouroboros3d_broken_missing_dependency  # noqa: F401
