"""ouroboros3d core: the model-agnostic framework (plugins, recipes, geometry, sampling, training).

Nothing in this package knows a particular model; the reference SVD and LGM components live in
``ouroboros_plugins`` and register through the ``ouroboros3d`` entry-point group.
"""

__version__ = "0.1.0"

from .hookspecs import hookimpl  # noqa: E402  (the marker plugins decorate their hooks with)

__all__ = ["hookimpl", "__version__"]
