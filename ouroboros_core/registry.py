"""Plugin discovery: which components and recipes are installed, and which plugins are broken.

Plugins are modules named by entry points of the ``ouroboros3d`` group. They are loaded with
pluggy's own entry-point loader, one entry-point name at a time and inside ``try``: pluggy does
not catch import errors, and one broken third-party package must not hide the others. A failed
plugin is recorded (name, distribution, version, error, hint); only a recipe that asks for one
of its components fails, with a message naming the failure.

Each plugin's hooks are called on their own (not through ``pm.hook``) so that every component
is stored with the distribution that provides it, and a plugin whose hook raises is dropped
as a whole instead of leaving half its components behind.

The environment variable ``OUROBOROS3D_DISABLE_PLUGINS`` (comma-separated names) skips, for
each name: the plugin whose entry-point name (``plugins list``'s PLUGIN column) or
distribution it is, before it is imported; or the component of that name. Names that match
nothing are kept in :attr:`Registry.unmatched_disabled`, which ``plugins list/check`` report.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .components import COMPONENT_KINDS, ComponentSpec
from .errors import PluginError
from .textutil import suggest

DISABLE_ENV = "OUROBOROS3D_DISABLE_PLUGINS"
RECIPE_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class RegisteredComponent:
    """A component spec together with the plugin and distribution that provide it."""

    spec: ComponentSpec
    plugin: str
    distribution: str
    version: str

    @property
    def provider(self) -> str:
        """``distribution version`` as shown in messages."""
        return f"{self.distribution} {self.version}".strip()


@dataclass(frozen=True)
class RegisteredRecipe:
    """A recipe file shipped by a plugin; recipes are addressed by the file's stem."""

    name: str
    path: Path
    plugin: str
    distribution: str
    version: str


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or whose registration hook raised."""

    plugin: str
    distribution: str
    version: str
    error: str
    hint: str
    exception: BaseException | None = field(default=None, compare=False, repr=False)

    def format(self) -> str:
        provider = f"{self.distribution} {self.version}".strip()
        return f"plugin '{self.plugin}' ({provider}) failed: {self.error} (fix: {self.hint})"


@dataclass(frozen=True)
class Conflict:
    """Two or more plugins register the same name; the name is unusable until one goes."""

    kind: str  # a component kind, or "recipe"
    name: str
    providers: tuple[str, ...]  # "distribution version (plugin 'x')" of each

    def format(self) -> str:
        return f"{self.kind} '{self.name}' is registered by more than one plugin: " + " and ".join(self.providers)

    @property
    def hint(self) -> str:
        return f"uninstall one of them, or disable one with {DISABLE_ENV}=<plugin or distribution name>"


@dataclass(frozen=True)
class CheckProblem:
    subject: str
    error: str
    hint: str


@dataclass
class CheckReport:
    """What :meth:`Registry.check` found: one line per checked component, and the problems."""

    checked: list[str]
    problems: list[CheckProblem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"ok       {item}" for item in self.checked]
        lines += [f"FAILED   {p.subject}: {p.error}\n         fix: {p.hint}" for p in self.problems]
        summary = f"{len(self.checked)} component(s) import fine, {len(self.problems)} problem(s)"
        return "\n".join(lines + [summary])


def _normalize(name: str) -> str:
    """PEP 503 normalisation, so "Ouroboros3D_Toy" and "ouroboros3d-toy" compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def disabled_from_env(environ: dict[str, str] | None = None) -> frozenset[str]:
    """The normalised plugin/distribution/component names listed in ``OUROBOROS3D_DISABLE_PLUGINS``."""
    value = (environ if environ is not None else os.environ).get(DISABLE_ENV, "")
    return frozenset(_normalize(part.strip()) for part in value.split(",") if part.strip())


def _import_hint(exc: BaseException, plugin: str, distribution: str) -> str:
    disable = f"or disable it with {DISABLE_ENV}={plugin}"
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"install the missing module '{exc.name}' (a dependency of {distribution}), {disable}"
    return f"reinstall or update {distribution}, {disable}"


class Registry:
    """The installed components and recipes.

    Args:
        extra_plugins: plugin objects (modules or instances with ``@hookimpl`` methods)
            registered in addition to the entry points; used by tests and embedding code.
        load_entry_points: ``False`` gives a registry holding only ``extra_plugins``.
        disabled: entry-point, distribution or component names to skip; defaults to
            ``OUROBOROS3D_DISABLE_PLUGINS``.
    """

    def __init__(
        self,
        extra_plugins: Iterable[Any] = (),
        *,
        load_entry_points: bool = True,
        disabled: Iterable[str] | None = None,
        group: str = hookspecs.ENTRY_POINT_GROUP,
    ) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.group = group
        self.disabled_names = frozenset(_normalize(n) for n in disabled) if disabled is not None else disabled_from_env()
        #: what ``disabled_names`` skipped: "plugin (distribution)" or "kind 'name' (distribution)"
        self.disabled: list[str] = []
        self._matched: set[str] = set()
        self.failures: list[PluginFailure] = []
        self._components: dict[tuple[str, str], RegisteredComponent] = {}
        self._recipes: dict[tuple[str, str], RegisteredRecipe] = {}
        self._conflicts: dict[tuple[str, str], list[str]] = {}
        if load_entry_points:
            self._load_entry_points()
        for plugin in extra_plugins:
            self.add_plugin(plugin)

    # ------------------------------------------------------------------ loading
    def _entry_points(self) -> dict[str, list[tuple[importlib.metadata.EntryPoint, importlib.metadata.Distribution]]]:
        """Entry points of our group by name, each distribution once (an editable install can
        show up twice on ``sys.path``)."""
        by_name: dict[str, list] = {}
        seen: set[tuple[str, str, str]] = set()
        for dist in importlib.metadata.distributions():
            for ep in dist.entry_points:
                if ep.group != self.group:
                    continue
                key = (_normalize(dist.metadata["Name"] or ""), ep.name, ep.value)
                if key in seen:
                    continue
                seen.add(key)
                by_name.setdefault(ep.name, []).append((ep, dist))
        return by_name

    def _load_entry_points(self) -> None:
        for ep_name, candidates in sorted(self._entry_points().items()):
            dists = [d.metadata["Name"] for _, d in candidates]
            hits = {_normalize(n) for n in (ep_name, *dists)} & self.disabled_names
            if hits:
                self._matched |= hits
                self.disabled.append(f"{ep_name} ({', '.join(dists)})")
                continue
            first = candidates[0][1]
            try:
                self.pm.load_setuptools_entrypoints(self.group, name=ep_name)
            except (Exception, SystemExit) as exc:  # a plugin's import may raise anything
                name, version = first.metadata["Name"], first.version
                self.failures.append(
                    PluginFailure(ep_name, name, version, f"{type(exc).__name__}: {exc}", _import_hint(exc, ep_name, name), exc)
                )
                continue
            plugin = self.pm.get_plugin(ep_name)
            if plugin is None:  # blocked in pluggy by embedding code
                continue
            loaded = next((d for p, d in self.pm.list_plugin_distinfo() if p is plugin), first)
            for _, dist in candidates:
                if _normalize(dist.metadata["Name"]) != _normalize(loaded.metadata["Name"]):
                    self.failures.append(
                        PluginFailure(
                            ep_name,
                            dist.metadata["Name"],
                            dist.version,
                            f"entry point name '{ep_name}' is already used by {loaded.metadata['Name']}",
                            f"rename the entry point of {dist.metadata['Name']} or uninstall one of the two",
                        )
                    )
            self._collect(plugin, ep_name, loaded.metadata["Name"], loaded.version)

    def add_plugin(self, plugin: Any, name: str | None = None, distribution: str | None = None, version: str = "") -> None:
        """Register a plugin object directly (not through an entry point).

        ``distribution`` defaults to the plugin's module name; it is what messages and
        ``plugins list`` show as the provider.
        """
        name = self.pm.register(plugin, name=name)
        if name is None:  # pluggy returns None for a blocked name
            return
        if distribution is None:
            distribution = getattr(plugin, "__name__", None) or type(plugin).__module__
        self._collect(plugin, name, distribution, version)

    def _call_hook(self, plugin: Any, hook_name: str, register) -> None:
        """Call one plugin's implementation of a hook, the way pluggy would (arguments by name)."""
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            if impl.plugin is plugin:
                impl.function(*[{"register": register}[arg] for arg in impl.argnames])

    def _collect(self, plugin: Any, plugin_name: str, distribution: str, version: str) -> None:
        """Run the plugin's registration hooks; keep what it registers only if nothing raised."""
        specs: list[ComponentSpec] = []
        recipe_paths: list[Path] = []

        def register_component(spec: ComponentSpec) -> None:
            if not isinstance(spec, ComponentSpec):
                raise TypeError(f"register() expects a ComponentSpec, got {type(spec).__name__}")
            if spec.kind not in COMPONENT_KINDS:
                raise ValueError(f"component '{spec.name}' has kind '{spec.kind}', not one of {', '.join(COMPONENT_KINDS)}")
            specs.append(spec)

        def register_recipe(path: str | Path) -> None:
            path = Path(path)
            if path.is_dir():
                found = sorted(p for p in path.iterdir() if p.suffix in RECIPE_SUFFIXES)
                if not found:
                    raise FileNotFoundError(f"registered recipe folder {path} holds no .yaml files")
                recipe_paths.extend(found)
            elif path.is_file() and path.suffix in RECIPE_SUFFIXES:
                recipe_paths.append(path)
            else:
                raise FileNotFoundError(f"registered recipe path {path} is not a .yaml file or a folder")

        try:
            self._call_hook(plugin, "ouroboros3d_register_components", register_component)
        except Exception as exc:
            self.pm.unregister(plugin)
            self.failures.append(
                PluginFailure(
                    plugin_name,
                    distribution,
                    version,
                    f"{type(exc).__name__} while registering: {exc}",
                    f"report it to the authors of {distribution}, or disable it with {DISABLE_ENV}={plugin_name}",
                    exc,
                )
            )
            return
        for spec in specs:
            if _normalize(spec.name) in self.disabled_names:
                self._matched.add(_normalize(spec.name))
                self.disabled.append(f"{spec.kind} '{spec.name}' ({distribution})")
                continue
            entry = RegisteredComponent(spec, plugin_name, distribution, version)
            self._add_unique(self._components, (spec.kind, spec.name), entry)
        # recipes separately: a plugin whose recipe files are missing (a wheel built without
        # its package data) keeps its components usable
        try:
            self._call_hook(plugin, "ouroboros3d_register_recipes", register_recipe)
        except Exception as exc:
            self.failures.append(
                PluginFailure(
                    plugin_name,
                    distribution,
                    version,
                    f"{type(exc).__name__} while registering recipes (its components are available): {exc}",
                    f"report it to the authors of {distribution} (recipe files missing from a package usually "
                    "mean its pyproject.toml lacks the package-data line for them)",
                    exc,
                )
            )
            return
        for path in recipe_paths:
            recipe = RegisteredRecipe(path.stem, path, plugin_name, distribution, version)
            self._add_unique(self._recipes, ("recipe", path.stem), recipe)

    def _add_unique(self, table: dict, key: tuple[str, str], entry: RegisteredComponent | RegisteredRecipe) -> None:
        """Add an entry; a second one under the same key turns the name into a conflict,
        except that a real component replaces a declared slot of the same kind and name."""

        def provider(e: RegisteredComponent | RegisteredRecipe) -> str:
            return f"{e.distribution} {e.version}".strip() + f" (plugin '{e.plugin}')"

        def is_slot(e: RegisteredComponent | RegisteredRecipe) -> bool:
            return isinstance(e, RegisteredComponent) and e.spec.slot

        if key in table and is_slot(table[key]) != is_slot(entry):
            # a real implementation fills a declared slot, whatever the loading order
            if is_slot(table[key]):
                table[key] = entry
            return
        if key in self._conflicts:
            self._conflicts[key].append(provider(entry))
        elif key in table:
            self._conflicts[key] = [provider(table.pop(key)), provider(entry)]
        else:
            table[key] = entry

    # ------------------------------------------------------------------ queries
    @property
    def unmatched_disabled(self) -> list[str]:
        """Names in ``disabled_names`` that match no plugin, distribution or component."""
        return sorted(self.disabled_names - self._matched)

    def unmatched_disabled_warning(self) -> str | None:
        """The line ``plugins list/check`` print when some disabled names match nothing."""
        if not self.unmatched_disabled:
            return None
        return (
            f"warning: {DISABLE_ENV} names {', '.join(self.unmatched_disabled)}, which match no installed plugin "
            "(PLUGIN column of `plugins list`), distribution or component"
        )

    @property
    def conflicts(self) -> list[Conflict]:
        return [Conflict(kind, name, tuple(providers)) for (kind, name), providers in sorted(self._conflicts.items())]

    def components(self, kind: str | None = None) -> list[RegisteredComponent]:
        """Registered components (of one kind), ordered by kind then name."""
        order = {k: i for i, k in enumerate(COMPONENT_KINDS)}
        items = [c for (k, _), c in self._components.items() if kind is None or k == kind]
        return sorted(items, key=lambda c: (order[c.spec.kind], c.spec.name))

    def names(self, kind: str) -> list[str]:
        return [c.spec.name for c in self.components(kind)]

    def entry(self, kind: str | None, name: str) -> RegisteredComponent:
        """The registered component, or a :class:`PluginError` saying why it is not usable.

        ``kind=None`` looks the name up among all kinds (for commands that take a bare name).
        """
        if kind is None:
            found = self.find(name)
            if len(found) > 1:
                kinds = ", ".join(c.spec.kind for c in found)
                raise PluginError(f"the name '{name}' is used by several kinds of component ({kinds})", hint="also give the kind")
            if found:
                return found[0]
            names = sorted({c.spec.name for c in self.components()})
            raise PluginError(f"no component named '{name}' is installed" + self._unavailable_note(), hint=suggest(name, names, "component"))
        if kind not in COMPONENT_KINDS:
            raise ValueError(f"unknown component kind {kind!r}; expected one of {COMPONENT_KINDS}")
        if (kind, name) in self._conflicts:
            conflict = Conflict(kind, name, tuple(self._conflicts[(kind, name)]))
            raise PluginError(conflict.format(), hint=conflict.hint)
        found_entry = self._components.get((kind, name))
        if found_entry is not None:
            return found_entry
        message = f"no {kind} named '{name}' is installed"
        other = [k for k in COMPONENT_KINDS if (k, name) in self._components]
        if other:
            message += f" ('{name}' is a {other[0]}, not a {kind})"
        message += self._unavailable_note()
        raise PluginError(message, hint=suggest(name, self.names(kind), kind))

    def get(self, kind: str | None, name: str) -> ComponentSpec:
        """The spec of component ``name`` of ``kind`` (see :meth:`entry` for the errors)."""
        return self.entry(kind, name).spec

    def find(self, name: str) -> list[RegisteredComponent]:
        """Components of any kind called ``name`` (for commands that take a bare name)."""
        return [c for c in self.components() if c.spec.name == name]

    def _unavailable_note(self) -> str:
        """Why a name might be missing: plugins that failed to load or were disabled."""
        note = ""
        if self.failures:
            note += "; plugins that failed to load: " + "; ".join(
                f"'{f.plugin}' ({f.distribution} {f.version}".rstrip() + f"): {f.error}" for f in self.failures
            )
        if self.disabled:
            note += f"; disabled by {DISABLE_ENV}: " + ", ".join(self.disabled)
        return note

    def recipes(self) -> dict[str, Path]:
        """Shipped recipes, name -> file."""
        return {r.name: r.path for _, r in sorted(self._recipes.items())}

    def recipe_path(self, name: str) -> Path:
        """The file of shipped recipe ``name``, or a :class:`PluginError` with the closest name."""
        if ("recipe", name) in self._conflicts:
            conflict = Conflict("recipe", name, tuple(self._conflicts[("recipe", name)]))
            raise PluginError(conflict.format(), hint=conflict.hint)
        if ("recipe", name) in self._recipes:
            return self._recipes[("recipe", name)].path
        raise PluginError(
            f"no recipe named '{name}' is installed" + self._unavailable_note(),
            hint=(suggest(name, self.recipes(), "recipe") + "; or give the path of a .yaml file")
            if self._recipes
            else "give the path of a .yaml recipe file",
        )

    # ------------------------------------------------------------------ checks
    def check(self) -> CheckReport:
        """Import every component's factory; report those that fail, broken plugins and conflicts."""
        checked: list[str] = []
        problems = [CheckProblem(f"plugin '{f.plugin}' ({f.distribution} {f.version})", f.error, f.hint) for f in self.failures]
        problems += [CheckProblem(c.format(), "ambiguous name", c.hint) for c in self.conflicts]
        for comp in self.components():
            subject = f"{comp.spec.kind} '{comp.spec.name}' ({comp.provider})"
            if comp.spec.slot:
                checked.append(subject + " [slot: declared, not implemented]")
                continue
            try:
                factory = comp.spec.resolve_factory()
                if not callable(factory):
                    raise TypeError(f"factory {comp.spec.factory!r} is not callable")
            except Exception as exc:
                problems.append(CheckProblem(subject, f"{type(exc).__name__}: {exc}", _import_hint(exc, comp.plugin, comp.distribution)))
            else:
                checked.append(subject)
        return CheckReport(checked, problems)

    def as_dict(self) -> dict[str, Any]:
        """Everything ``plugins list --json`` prints."""
        return {
            "components": [
                {
                    "kind": c.spec.kind,
                    "name": c.spec.name,
                    "plugin": c.plugin,
                    "distribution": c.distribution,
                    "version": c.version,
                    "devices": list(c.spec.devices),
                    "slot": c.spec.slot,
                    "presets": sorted(c.spec.presets),
                    "description": c.spec.description,
                }
                for c in self.components()
            ],
            "recipes": [
                {"name": r.name, "path": str(r.path), "distribution": r.distribution, "version": r.version}
                for _, r in sorted(self._recipes.items())
            ],
            "failed": [
                {"plugin": f.plugin, "distribution": f.distribution, "version": f.version, "error": f.error, "hint": f.hint}
                for f in self.failures
            ],
            "conflicts": [{"kind": c.kind, "name": c.name, "providers": list(c.providers)} for c in self.conflicts],
            "disabled": list(self.disabled),
            "disabled_unmatched": self.unmatched_disabled,
        }


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use from the installed entry points."""
    global _default
    if _default is None:
        _default = Registry()
    return _default


def set_registry(registry: Registry | None) -> None:
    """Replace the process-wide registry (tests), or drop it so the next use rebuilds it."""
    global _default
    _default = registry
