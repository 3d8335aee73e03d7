"""The plugin manager and the registry of named components.

The manager is built in a fixed order: the built-ins in ``aotbench_plugins`` (installed from the ``plugins/`` folder),
then every module of the ``aotbench`` entry-point group, then ``check_pending()`` so that a misspelt hook in a
third-party plugin fails loudly instead of being ignored.

``AOTBENCH_PLUGINS`` restricts which *entry-point* plugins load, as ``LLM_LOAD_PLUGINS`` does in simonw/llm: a comma
list of entry-point or distribution names (distribution names compared as pip does, PEP 503: ``My_Dist`` is
``my-dist``); the empty string loads none. A name that matches nothing is reported on stderr with the names available.
Built-ins always load, so the suite stays usable while a broken third-party plugin is switched off.

Third-party plugins fail alone: one that fails to import, or whose register hook raises, is skipped with one line on
stderr naming it and its distribution, and every command that does not need it goes on (``list`` included); a command
that names a component it would have provided gets the usual unknown-name error, which mentions the skipped plugins.
Every registered object is held to its kind's typed contract (:mod:`aotbench.contracts`) before it enters the
registry: a third-party component that lacks a required member, or whose member cannot take the engine's calls, is
skipped alone with one line naming it, its plugin and the member at fault (the plugin's other components load); a
built-in one is a bug and raises.
Two distributions with one entry-point name: the first one ``importlib.metadata`` finds (sys.path order, the one
``import`` would find too) loads, and one line on stderr names both. What stays fatal is what makes the registry
ambiguous or a hook silently unused: two components with one name, a hook aotbench does not define, a hook with
parameters its spec lacks (one-line errors naming the plugins).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable

import pluggy

from . import contracts, hookspecs
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
    "launcher": "register_launchers",
    "schedule": "register_schedules",
    "objective": "register_objectives",
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
        """The first line of the component's docstring ("" without one), shown by ``list``."""
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
    """All registered components, by kind and name; ``skipped`` names the plugins that failed to load and the
    components refused by their contract."""

    def __init__(self, components: list[Component], skipped: tuple[str, ...] = ()):
        self._by_kind: dict[str, dict[str, Component]] = {k: {} for k in KINDS}
        for c in components:
            self._by_kind[c.kind][c.name] = c
        self.skipped = tuple(skipped)

    def get(self, kind: str, name: str) -> Component:
        """The component ``name`` of ``kind``. Raises :class:`UserError` naming the available ones (and the plugins
        skipped because they failed to load)."""
        table = self._by_kind[kind]
        if name not in table:
            skipped = f"; skipped as they failed to load: {', '.join(self.skipped)}" if self.skipped else ""
            raise UserError(f"unknown {kind} '{name}' (available: {', '.join(sorted(table)) or 'none'}){skipped}")
        return table[name]

    def names(self, kind: str) -> list[str]:
        """Every registered name of ``kind``, sorted."""
        return sorted(self._by_kind[kind])

    def defaults(self, kind: str) -> list[str]:
        """The names of ``kind`` registered with ``default=True``: what a grid uses when the axis is not given."""
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


def _normalize(name: str) -> str:
    """A distribution name as pip compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _one_line(err: BaseException) -> str:
    """``Type: first line of the message`` (a plugin's exception, for a one-line notice)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _notice(message: str) -> None:
    print(f"aotbench: {' '.join(message.split())}", file=sys.stderr)


def _entry_points(allowed: str | None) -> list[tuple[importlib.metadata.EntryPoint, str]]:
    """(entry point, "distribution version") of the ``aotbench`` group to load, after AOTBENCH_PLUGINS and duplicates.

    Distributions come in sys.path order (``importlib.metadata.distributions()``, which pluggy also walks). One
    distribution found twice on sys.path counts once. An entry-point name claimed by several distributions loads from
    the first of them only, with one line naming them all (pluggy used to drop the others silently).
    """
    found: dict[str, list[tuple[importlib.metadata.EntryPoint, str, str]]] = {}
    for dist in importlib.metadata.distributions():
        eps = [ep for ep in dist.entry_points if ep.group == "aotbench"]
        dist_name = (dist.metadata["Name"] or "unknown-distribution") if eps else ""
        for ep in eps:
            claims = found.setdefault(ep.name, [])
            if not any(_normalize(d) == _normalize(dist_name) for _, d, _ in claims):
                claims.append((ep, dist_name, f"{dist_name} {dist.version}"))
    if allowed is not None:
        wanted = {s.strip() for s in allowed.split(",") if s.strip()}
        dists = {d for claims in found.values() for _, d, _ in claims}
        unknown = sorted(w for w in wanted if w not in found and _normalize(w) not in {_normalize(d) for d in dists})
        if unknown:
            _notice(f"AOTBENCH_PLUGINS names no installed aotbench plugin: {', '.join(unknown)} (entry points: "
                    f"{', '.join(sorted(found)) or 'none'}; distributions: {', '.join(sorted(dists)) or 'none'})")
        wanted_dists = {_normalize(w) for w in wanted}
        found = {name: [c for c in claims if name in wanted or _normalize(c[1]) in wanted_dists]
                 for name, claims in found.items()}
    out = []
    for name, claims in found.items():
        if not claims:
            continue
        if len(claims) > 1:
            _notice(f"plugin name '{name}' is claimed by several distributions: {', '.join(c[2] for c in claims)}; "
                    f"loaded only the first on sys.path ({claims[0][2]}); uninstall the others, or choose one with "
                    f"AOTBENCH_PLUGINS=<distribution>")
        out.append((claims[0][0], claims[0][2]))
    return out


def build_manager() -> pluggy.PluginManager:
    """Built-ins, then entry points (filtered by AOTBENCH_PLUGINS), then check_pending().

    An entry point that fails to import, or that pluggy refuses to register (e.g. a module registered twice), is
    skipped with one line on stderr. The manager carries ``aotbench_dists`` (plugin name -> "distribution version"
    of each entry-point plugin) and ``aotbench_skipped`` (the skipped ones, "name (distribution version)").
    """
    pm = pluggy.PluginManager("aotbench")
    pm.add_hookspecs(hookspecs)
    for module in _builtin_modules():
        pm.register(module, name=module.__name__)
    pm.aotbench_dists, pm.aotbench_skipped = {}, []
    for ep, dist in _entry_points(os.environ.get("AOTBENCH_PLUGINS")):
        try:
            plugin = ep.load()
        except Exception as err:  # a third-party module that fails to import fails alone
            _skip(pm, ep.name, dist, f"it failed to import: {_one_line(err)}")
            continue
        try:
            pm.register(plugin, name=ep.name)
        except pluggy.PluginValidationError as err:
            raise UserError(f"plugin '{ep.name}' ({dist}) does not match aotbench's hook spec: {err}") from None
        except ValueError as err:  # pluggy: this name or this module is registered already
            _skip(pm, ep.name, dist, f"it cannot be registered: {_one_line(err)}")
            continue
        pm.aotbench_dists[ep.name] = dist
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        raise UserError(f"plugin '{err.plugin}' implements a hook aotbench does not define: {err}") from None
    return pm


def _skip(pm: pluggy.PluginManager, name: str, dist: str, why: str) -> None:
    _notice(f"skipped plugin '{name}' ({dist}): {why}")
    pm.aotbench_skipped.append(f"'{name}' ({dist})")


def _collect(pm: pluggy.PluginManager) -> list[Component]:
    """Every hook's registrations; an entry-point plugin whose hook raises is skipped whole (all its hooks)."""
    dists = getattr(pm, "aotbench_dists", {})
    builtin = f"aotbench {_version()} (built-in)"
    registered: list[Component] = []
    failed: set[str] = set()
    for kind, hook_name in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin_name in failed:
                continue
            dist = dists.get(impl.plugin_name, builtin)

            def register(name, obj, default=False, check=None, _impl=impl, _dist=dist, _kind=kind):
                if not isinstance(name, str) or not name:
                    raise UserError(f"plugin '{_impl.plugin_name}' registered a {_kind} without a name")
                why = contracts.problem(_kind, obj)
                if why is None and check is not None and not callable(check):
                    why = f"its check is of type {type(check).__name__}, not callable"
                if why is not None:
                    if _impl.plugin_name not in dists:
                        raise TypeError(f"built-in {_kind} '{name}' ({_impl.plugin_name}) breaks its contract: {why}")
                    _notice(f"skipped {_kind} '{name}' of plugin '{_impl.plugin_name}' ({_dist}): {why}")
                    pm.aotbench_skipped.append(f"{_kind} '{name}' of '{_impl.plugin_name}' ({_dist})")
                    return
                registered.append(Component(_kind, name, obj, _impl.plugin_name, _dist, bool(default), check))

            try:
                impl.function(register)
            except UserError:
                raise
            except Exception as err:
                if impl.plugin_name not in dists:
                    raise  # a built-in's bug keeps its traceback
                failed.add(impl.plugin_name)
                _skip(pm, impl.plugin_name, dist, f"its {hook_name} hook raised {_one_line(err)}")
    seen: dict[tuple[str, str], Component] = {}
    components: list[Component] = []
    for comp in registered:
        if comp.plugin in failed:
            continue
        prior = seen.get((comp.kind, comp.name))
        if prior is not None:
            raise UserError(f"{comp.kind} name '{comp.name}' is registered twice: by plugin '{prior.plugin}' "
                            f"({prior.distribution}) and by plugin '{comp.plugin}' ({comp.distribution})")
        seen[(comp.kind, comp.name)] = comp
        components.append(comp)
    return components


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry (built once; :func:`reset` rebuilds it, e.g. after AOTBENCH_PLUGINS changes)."""
    global _registry
    if _registry is None:
        pm = build_manager()
        components = _collect(pm)
        _registry = Registry(components, tuple(getattr(pm, "aotbench_skipped", ())))
    return _registry


def reset() -> None:
    """Forget the process-wide registry; the next :func:`get_registry` builds it again."""
    global _registry
    _registry = None
