"""The plugin manager and the registry of named components.

The manager is built in a fixed order: the built-ins in ``aotbench_plugins`` (installed from the ``plugins/`` folder),
then every module of the ``aotbench`` entry-point group, then ``check_pending()`` so that a misspelt hook in a
third-party plugin fails loudly instead of being ignored.

``AOTBENCH_PLUGINS`` restricts which *entry-point* plugins load, as ``LLM_LOAD_PLUGINS`` does in simonw/llm: a comma
list of entry-point or distribution names; the empty string loads none. Built-ins always load, so the suite stays
usable while a broken third-party plugin is switched off.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import UserError

hookimpl = pluggy.HookimplMarker("aotbench")

#: kind -> the hook that registers it
KINDS = {
    "pairing": "register_pairings",
    "sampler": "register_samplers",
    "guidance": "register_guidance",
    "dataset": "register_datasets",
    "network": "register_networks",
    "metric": "register_metrics",
}

# Arguments that belong to a component's interface, not to its user-settable parameters.
_INTERFACE_ARGS = {"self", "noise_sampler", "callback", "context", "shape", "num_classes", "denoise", "x", "sigmas"}


@dataclass(frozen=True)
class Component:
    """One registered name: what it is, who provided it, and which parameters it takes."""

    kind: str
    name: str
    obj: Any
    plugin: str
    distribution: str
    default: bool = False
    check: Callable[..., None] | None = None

    @property
    def params(self) -> dict[str, Any]:
        """User-settable parameters and their defaults, read from the signature."""
        target = self.obj.__init__ if inspect.isclass(self.obj) else self.obj
        out = {}
        for p in inspect.signature(target).parameters.values():
            if p.name in _INTERFACE_ARGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.default is p.empty:
                continue
            out[p.name] = p.default
        return out

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.obj) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def resolve(self, params: dict[str, Any]) -> dict[str, Any]:
        """Complete ``params`` with defaults, coerce numbers, and refuse unknown keys or values out of domain."""
        known = self.params
        unknown = sorted(set(params) - set(known))
        if unknown:
            valid = ", ".join(f"{k}={v!r}" for k, v in known.items()) or "none"
            raise UserError(f"{self.kind} '{self.name}' has no parameter {', '.join(unknown)} (parameters: {valid})")
        out = dict(known)
        for key, value in params.items():
            default = known[key]
            if isinstance(default, bool) or isinstance(value, bool):
                if not isinstance(value, bool) or not isinstance(default, (bool, type(None))):
                    raise UserError(f"{self.kind} '{self.name}': {key} must be {type(default).__name__}, got {value!r}")
            elif isinstance(default, float) and isinstance(value, int):
                value = float(value)
            elif isinstance(default, str) and isinstance(value, (int, float)):
                value = str(value)  # "attn_resolutions=16" parses as a number; the parameter is text
            elif default is not None and not isinstance(value, type(default)):
                if not (isinstance(default, int) and isinstance(value, float) and value.is_integer()):
                    raise UserError(
                        f"{self.kind} '{self.name}': {key} must be {type(default).__name__}, got {value!r}")
                value = int(value)
            out[key] = value
        self.validate(out)
        return out

    def validate(self, params: dict[str, Any]) -> None:
        """Run the component's own domain check (a class constructor, or the ``check`` given at registration)."""
        try:
            if self.check is not None:
                self.check(**params)
            elif inspect.isclass(self.obj) and self.kind != "network":
                self.obj(**params)
        except (ValueError, TypeError, OSError) as err:
            raise UserError(f"{self.kind} '{self.name}': {err}") from None

    def build(self, **params):
        """An instance for classes; for functions (samplers), the function with its parameters bound."""
        if inspect.isclass(self.obj):
            return self.obj(**params)
        return _Bound(self.obj, params)


class _Bound:
    """A sampler function with its user parameters bound; picklable (unlike a lambda)."""

    def __init__(self, fn, params):
        self.fn, self.params = fn, dict(params)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **{**self.params, **kwargs})


class Registry:
    """All registered components, by kind and name."""

    def __init__(self, components: list[Component]):
        self._by_kind: dict[str, dict[str, Component]] = {k: {} for k in KINDS}
        for c in components:
            self._by_kind[c.kind][c.name] = c

    def get(self, kind: str, name: str) -> Component:
        table = self._by_kind[kind]
        if name not in table:
            raise UserError(f"unknown {kind} '{name}' (available: {', '.join(sorted(table)) or 'none'})")
        return table[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def defaults(self, kind: str) -> list[str]:
        return sorted(n for n, c in self._by_kind[kind].items() if c.default)

    def __iter__(self):
        for kind in KINDS:
            yield from (self._by_kind[kind][n] for n in sorted(self._by_kind[kind]))


def _builtin_modules():
    package = importlib.import_module("aotbench_plugins")
    return [importlib.import_module(f"aotbench_plugins.{m}") for m in package.BUILTINS]


def _version() -> str:
    try:
        return importlib.metadata.version("aotbench")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


def build_manager() -> pluggy.PluginManager:
    """Built-ins, then entry points (filtered by AOTBENCH_PLUGINS), then check_pending()."""
    pm = pluggy.PluginManager("aotbench")
    pm.add_hookspecs(hookspecs)
    for module in _builtin_modules():
        pm.register(module, name=module.__name__)
    allowed = os.environ.get("AOTBENCH_PLUGINS")
    if allowed is not None:
        wanted = {s.strip() for s in allowed.split(",") if s.strip()}
        for ep in importlib.metadata.entry_points(group="aotbench"):
            dist = getattr(ep, "dist", None)
            if ep.name not in wanted and (dist is None or dist.name not in wanted):
                pm.set_blocked(ep.name)
    try:
        pm.load_setuptools_entrypoints("aotbench")
    except Exception as err:  # a third-party module that fails to import
        raise UserError(f"an aotbench plugin failed to load: {type(err).__name__}: {err} "
                        f"(set AOTBENCH_PLUGINS to the plugins you want, or '' for none)") from None
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        raise UserError(f"plugin '{err.plugin}' implements a hook aotbench does not define: {err}") from None
    return pm


def _collect(pm: pluggy.PluginManager) -> list[Component]:
    dists = {id(plugin): f"{d.project_name} {d.version}" for plugin, d in pm.list_plugin_distinfo()}
    builtin = f"aotbench {_version()} (built-in)"
    seen: dict[tuple[str, str], Component] = {}
    components: list[Component] = []
    for kind, hook_name in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            dist = dists.get(id(impl.plugin), builtin)

            def register(name, obj, default=False, check=None, _impl=impl, _dist=dist, _kind=kind):
                if not isinstance(name, str) or not name:
                    raise UserError(f"plugin '{_impl.plugin_name}' registered a {_kind} without a name")
                comp = Component(_kind, name, obj, _impl.plugin_name, _dist, bool(default), check)
                prior = seen.get((_kind, name))
                if prior is not None:
                    raise UserError(f"{_kind} name '{name}' is registered twice: by plugin '{prior.plugin}' "
                                    f"({prior.distribution}) and by plugin '{comp.plugin}' ({comp.distribution})")
                seen[(_kind, name)] = comp
                components.append(comp)

            impl.function(register)
    return components


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry (built once; :func:`reset` rebuilds it, e.g. after AOTBENCH_PLUGINS changes)."""
    global _registry
    if _registry is None:
        _registry = Registry(_collect(build_manager()))
    return _registry


def reset() -> None:
    global _registry
    _registry = None
