"""The recipes shipped with ouroboros3d, registered like any plugin's recipes."""

from pathlib import Path

from ouroboros_core import hookimpl


@hookimpl
def ouroboros3d_register_recipes(register):
    register(Path(__file__).parent)
