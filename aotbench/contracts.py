"""Typed contracts of the plugin kinds, and the check every registered component passes.

Each kind is a :class:`typing.Protocol` below: :class:`Pairing`, :class:`Sampler`, :class:`Guidance`,
:class:`Dataset`, :class:`Network`, :class:`Metric`, :class:`Schedule`, :class:`Objective` and :class:`Launcher`.
A Protocol holds the *required* members, with the call signatures the engine uses; *optional* members, which the
engine uses only when a component has them, are named in each Protocol's docstring, and those that are methods have a
Protocol of their own (:class:`PoolCheck`, :class:`GuidancePrepare`, :class:`NetworkModule`, :class:`LauncherCheck`,
:class:`LauncherDescribe`), so a type checker can hold a plugin to them too.

Shapes: ``N``, ``P`` or ``B`` samples (a cell, a pool, a batch); ``*S`` the per-sample shape (``(2,)`` for 2-D sets,
``(C, H, W)`` for images). Data and samples are in [-1, 1]; noise is standard normal; sigma is EDM's noise level
(the standard deviation of the noise added to the data, in data units).

:func:`problem` is what :mod:`aotbench.plugins` runs on every ``register(name, obj)`` call, before the component
enters the registry. It looks only at the object as registered (nothing is built): the object's form (a class whose
instances carry the members, or a callable), every required member, and the optional members it has. A member must
be defined on the class (one set only in ``__init__`` cannot be seen), and its signature must accept the engine's
calls: every argument the Protocol lists, as the engine passes it (positional or keyword), both with and without the
Protocol's optional arguments. Extra parameters are fine when they have defaults (they are the user-settable
parameters). A third-party component that fails the check is skipped with one line naming its plugin and the member
at fault; a built-in one is a bug and raises.

Nothing here imports the engine: the types that only annotate (``Splits``, ``EvalContext``, ``GuidanceContext``)
are imported for type checkers alone.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import torch

    from .data import Splits
    from .evaluate import EvalContext, GuidanceContext

#: the model capabilities a guidance may declare in ``needs``
GUIDANCE_NEEDS = frozenset({"conditional", "label_dropout"})


# ------------------------------------------------------------------------------------------------------- pairing
@runtime_checkable
class Pairing(Protocol):
    """A noise-data pairing strategy: the registered object is a class, and ``obj(**params)`` has these members.

    The constructor takes only keyword parameters with defaults (the user-settable ones) and raises ValueError for a
    value outside its domain. The instance must be picklable: the engine may run ``pair`` in a worker process.

    Optional members:

    - ``check_pool(pool, shape)`` (:class:`PoolCheck`);
    - ``pool_memory(pool, shape)`` (:class:`PoolMemory`);
    - ``noise_factor``: an int f >= 1 (an attribute of the instance, so it may follow a parameter): ``pair``
      then receives f P noises and returns an *injective* map from the P items into them (nearest-of-k noise);
    - ``stateful = True`` (a class attribute): the pairing keeps state from pool to pool (:class:`PairingState`:
      ``start``, ``state_dict``, ``load_state_dict``), ``pair`` also receives ``index=`` (the pool's dataset
      indices [P], long), its pools are paired in order by one process, and its state is checkpointed with the
      model. A stateful pairing cannot pair global pools.
    """

    def pair(self, data: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The pairing of one pool: ``perm`` [P] (long) such that ``noise[perm[i]]`` is paired with ``data[i]``.

        ``data`` [P, *S] float32 in [-1, 1] (augmented, if augmentation is on); ``noise`` [f P, *S] float32
        standard normal (f the noise factor, 1 unless declared); ``labels`` [P] long in 0..K-1 when the model is
        class-conditional, else None. ``perm`` must map the P items to distinct noises: a bijection of ``range(P)``
        for f = 1 (the engine checks it and refuses the pool otherwise). A pairing that draws its own noise
        (LOOM-CFM's persistent noise) returns ``(perm, own_noise)`` instead, ``own_noise`` [M >= P, *S] float32
        standard normal, ``perm`` injective into it; the engine trains on that noise and measures it
        (``noise_ks_p``). Raises :class:`aotbench.errors.UserError` (one line) for data it cannot pair, e.g.
        non-finite values; any other exception ends training with its message.
        """
        ...


@runtime_checkable
class PoolCheck(Protocol):
    """Optional member of a :class:`Pairing`: refuse a pool size before any work starts."""

    def check_pool(self, pool: int, shape: tuple[int, ...]) -> None:
        """Raise ValueError (one line, its cause) for a pool of ``pool`` samples of per-sample ``shape`` it cannot
        handle, e.g. one whose cost matrix exceeds a memory budget; return None otherwise."""
        ...


@runtime_checkable
class PoolMemory(Protocol):
    """Optional member of a :class:`Pairing`: the memory one pairing of a pool needs, so the engine can refuse,
    before training, a pool whose pairing workers would not fit in memory together."""

    def pool_memory(self, pool: int, shape: tuple[int, ...]) -> int:
        """Peak bytes one call of ``pair`` on a pool of ``pool`` samples of per-sample ``shape`` allocates beyond
        its inputs (cost matrix and solver), as measured for the method."""
        ...


@runtime_checkable
class PairingState(Protocol):
    """The members a pairing with ``stateful = True`` must have: its state is part of the training state.

    ``pair`` of a stateful pairing is called as ``pair(data, noise, labels, index=index)``. Each rank has its own
    instance. The engine calls ``start`` once per run (before the first pool, and again before loading a state on
    resume), and snapshots ``state_dict()`` before and after each pool (in the pairing worker, if there is one), so
    a resumed run pairs every later pool exactly as an uninterrupted one.
    """

    def start(self, n_items: int, seed: int) -> None:
        """A fresh state for a training set of ``n_items`` items, its randomness derived from ``seed`` (an int,
        derived from the run seed and the rank)."""
        ...

    def state_dict(self) -> dict:
        """The state: a dict of tensors and plain numbers (saved in the checkpoint, read with
        ``weights_only=True``); a copy, not a view the pairing goes on mutating."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Take over a state written by :meth:`state_dict` after :meth:`start`. Raises ValueError (one line) for a
        state it cannot use, e.g. one written for a dataset of another size."""
        ...


# ------------------------------------------------------------------------------------------------------- sampler
@runtime_checkable
class Denoiser(Protocol):
    """What a sampler receives as ``denoise``: the engine's counted, guided, preconditioned model D(x; sigma)."""

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor, stage: int = 0,
                 rows: torch.Tensor | None = None) -> torch.Tensor:
        """D(x; sigma), shaped and typed like ``x`` [B, *S].

        ``sigma``: a float, a 0-d tensor, or a [B] tensor with one sigma per row (adaptive samplers). ``stage``: 0
        for a step's first evaluation, 1 for a corrector's (Heun's second). ``rows``: when ``x`` holds only some
        rows of the batch, their indices (long), so their class labels go with them.
        """
        ...


@runtime_checkable
class NoiseSampler(Protocol):
    """What a stochastic sampler receives as ``noise_sampler``: fresh N(0, I) noise from each sample's own stream."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Standard-normal noise shaped like ``x`` [B, *S]; row i from the stream of the batch's sample i."""
        ...


@runtime_checkable
class Sampler(Protocol):
    """An ODE/SDE sampler: the registered object is a function (or a class whose instances are called so).

    User-settable parameters are keyword-only with defaults, after ``callback``; a registered ``check(**params)``
    raises ValueError for values outside their domain. A sampler never counts network evaluations (the engine does)
    and never draws from torch's global generator; nothing in a row may depend on other rows.

    No optional members.
    """

    def __call__(self, denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                 noise_sampler: NoiseSampler | None = None,
                 callback: Callable[[dict[str, Any]], None] | None = None) -> torch.Tensor:
        """x at sigma = 0, [B, *S], like ``x``.

        ``x`` [B, *S] is noise * sigmas[0]; ``sigmas`` [steps + 1] is descending and ends in 0. ``callback``, if
        given, is called as ``callback({"i", "x", "sigma", "denoised"})`` after each evaluation on the main path.
        Raises :class:`aotbench.errors.UserError` (one line) when it cannot finish, e.g. a non-finite state.
        """
        ...


# ------------------------------------------------------------------------------------------------------ guidance
@runtime_checkable
class Guidance(Protocol):
    """A guidance method: the registered object is a class, and ``obj(**params)`` has these members.

    The constructor takes only keyword parameters with defaults and raises ValueError (or OSError for a missing
    file) for a value outside its domain.

    Optional members:

    - ``needs``: a set (or frozenset, tuple, list) of model capabilities it requires, from :data:`GUIDANCE_NEEDS`
      (``"conditional"``, ``"label_dropout"``); the engine refuses an impossible combination before any work
      starts. Absent means none. Checked at registration when it is a class attribute.
    - ``prepare(context)`` (:class:`GuidancePrepare`).
    """

    def wrap(self, denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
             context: GuidanceContext) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The guided denoiser ``f(x, sigma)`` for one batch: ``x`` [B, *S] float32, ``sigma`` a 0-d or [B] float32
        tensor; ``f`` returns [B, *S] like ``x``.

        ``denoise`` is the engine's counted model denoiser for the batch (conditional on ``context.labels`` when the
        model is); ``context`` is an :class:`aotbench.evaluate.GuidanceContext` (the unconditional denoiser, labels,
        dataset, cache folder, ``costs`` for extra evaluations the guidance spends, and ``stage``: 0 for a step's
        first evaluation, 1 for a corrector's).
        """
        ...


@runtime_checkable
class GuidancePrepare(Protocol):
    """Optional member of a :class:`Guidance`: work once per cell before its first batch."""

    def prepare(self, context: GuidanceContext) -> None:
        """Called with the first batch's :class:`aotbench.evaluate.GuidanceContext` before ``wrap`` (e.g. to train
        or load a discriminator, cached under ``context.cache_dir``). Raises UserError (one line) when it cannot."""
        ...


# ------------------------------------------------------------------------------------------------------- dataset
@runtime_checkable
class Dataset(Protocol):
    """A dataset: the registered object is a class, and ``obj(**params)`` has these members.

    The constructor takes only keyword parameters with defaults and raises ValueError or OSError (a missing file)
    for a value it cannot use.

    Optional class attributes:

    - ``network``: a str, the network choice used when the user gives none (e.g. ``"unet:channels=16"``);
    - ``defaults``: a dict of grid axes and values (e.g. ``{"train_steps": 3000}``), the training budget used when
      the user gives none.
    """

    def load(self) -> Splits:
        """An :class:`aotbench.data.Splits`: ``train`` [N, *S] and ``heldout`` [M, *S] float32 in [-1, 1], labels
        [N] / [M] long (any non-negative integers; the engine maps them to 0..K-1 and fingerprints the content) or
        None, and a feature extractor for the domain Frechet distance. Raises ValueError or OSError (one line, the
        cause) for data it cannot load; the engine refuses non-finite values and mismatched labels."""
        ...


# ------------------------------------------------------------------------------------------------------- network
@runtime_checkable
class NetworkModule(Protocol):
    """The raw network F a :class:`Network` builds (a ``torch.nn.Module``); the engine wraps it in EDM's
    preconditioning and calls it as below. Checked at registration when the network is registered as a class."""

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        """F's output [B, *S] float32 for ``x`` [B, *S] float32 (c_in * the noisy input) and ``c_noise`` [B]
        (ln(sigma) / 4); ``class_labels`` [B] long, ``num_classes`` meaning "no label" (label dropout), or None;
        ``augment_labels`` [B, A] float32 (augmentation parameters) or None."""
        ...


@runtime_checkable
class Network(Protocol):
    """A raw network factory: the registered object is a class or a function, called with the data's per-sample
    shape and class count plus the user's parameters (keyword, with defaults).

    Optional class attribute: ``list_shape``, a tuple of ints, the per-sample shape at which ``python -m aotbench
    list`` counts the network's parameters.
    """

    def __call__(self, shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
        """A :class:`NetworkModule` for samples of ``shape`` (``*S``) and ``num_classes`` classes (0:
        unconditional). Raises ValueError or TypeError (one line) for a shape it cannot take."""
        ...


# -------------------------------------------------------------------------------------------------------- metric
@runtime_checkable
class Metric(Protocol):
    """A metric computed for each evaluated cell: the registered object is a class, and ``obj(**params)`` has these
    members. The constructor takes only keyword parameters with defaults and raises ValueError (or OSError) for a
    value outside its domain.

    No optional members.
    """

    def compute(self, ctx: EvalContext) -> dict[str, float | int | str | bool]:
        """This metric's outputs for the cell: numbers (columns of the tables) and descriptors (strings, flags,
        counts that say what a number is, e.g. ``fd_extractor``, ``fd_n``).

        ``ctx`` is an :class:`aotbench.evaluate.EvalContext`: the cell's samples, noise, labels, features, the
        reference solve (``ctx.solve_reference``), a memo shared by the cells of one model (``ctx.memo(key, fn)``,
        keys from :mod:`aotbench.identity`), ``ctx.warn(message)`` for a one-line caveat. Raises UserError (one line)
        for a cell it cannot measure.
        """
        ...


# ------------------------------------------------------------------------------------------------------ schedule
@runtime_checkable
class Schedule(Protocol):
    """A sampling schedule: the registered object is a class, and ``obj(**params)`` has these members. The
    constructor takes only keyword parameters with defaults and raises ValueError for a value outside its domain.

    Optional class attribute: ``uses_rho`` (bool) [False]: the schedule reads the cell's ``rho``; when false, the
    grid records such cells at the default rho, so that rho values that cannot change a number do not split them.
    """

    def sigmas(self, steps: int, sigma_min: float, sigma_max: float, rho: float, *, device: Any = None) -> Any:
        """The noise levels of a ``steps``-step sampler: a float64 tensor ``[steps + 1]``, strictly decreasing from
        ``sigma_max`` (index 0) to ``sigma_min`` (index ``steps - 1``), then 0. Raises ValueError for ``steps < 1``
        or ``not 0 < sigma_min < sigma_max``."""
        ...


# ----------------------------------------------------------------------------------------------------- objective
@runtime_checkable
class Objective(Protocol):
    """A training objective in EDM's σ-space (:mod:`aotbench.objective`): the registered object is a class, and
    ``obj(**params)`` has these members. The constructor takes only keyword parameters with defaults and raises
    ValueError for a value outside its domain (e.g. a distribution's scale <= 0), so a bad value is refused before
    training. The engine trains D(x; σ) = c_skip x + c_out F(c_in x, c_noise) on λ(σ) ‖D(y + σ n; σ) − y‖² with σ
    from ``sample_sigma`` (Karras et al. 2022, Eq. 2, 7 and 8).
    """

    def sample_sigma(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[n]`` float32 training noise levels, every one > 0 and finite, drawn from ``generator`` alone (never
        from torch's global generator: the engine seeds ``generator`` by seed, rank and pool)."""
        ...

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """The loss weight λ(σ) > 0, shaped like ``sigma`` (``[B, 1, ..., 1]``, the data's dtype)."""
        ...

    def precond(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) for ``sigma`` ``[B, 1, ..., 1]`` float32 (> 0): the first three shaped
        like ``sigma``, ``c_noise`` ``[B]`` (the network's noise-level input)."""
        ...


# ------------------------------------------------------------------------------------------------------ launcher
@runtime_checkable
class Launcher(Protocol):
    """Where a sweep's jobs run: the registered object is a class, and ``obj(**params)`` has these members.

    Optional class attributes (the engine's default when absent in brackets):

    - ``on_this_machine`` (bool) [False]: the sweep schedules the jobs itself on this machine; false: whole arrays go
      to a scheduler, and the sweep waits;
    - ``own_processes`` (bool) [True]: a job may span several processes (DDP ranks); false: ranks are simulated;
    - ``signal_delay_s`` (int or None) [None]: default lead, in seconds, of the preemption signal (USR2) before a
      job's time limit; None when the launcher sends none;
    - ``unlisted`` (str or None) [None]: the state of a job neither the launcher nor an outcome file knows.

    Optional methods: ``check(plan, *, dry_run)`` (:class:`LauncherCheck`), ``describe(resources)``
    (:class:`LauncherDescribe`).
    """

    def submit(self, fn: Callable[[dict], Any], payloads: list[dict], job: Any) -> list:
        """Run ``fn(payload)`` for each payload as one task of an array described by ``job`` (the sweep's job
        spec: stage, resources, folder, the job id to wait for, requeues allowed); one handle per payload, each with
        ``job_id`` (letters, digits, ``_.-``) and ``done()``. ``fn`` is picklable and writes its own outcome file."""
        ...

    def states(self, job_ids: list[str]) -> dict[str, str]:
        """What the launcher knows now of these jobs, ``{job_id: state}`` in SLURM's state names (PENDING, RUNNING,
        COMPLETED, FAILED, ...); ids it does not know are left out."""
        ...

    def log_path(self, folder: Path, job_id: str) -> Path | None:
        """A job's error log under the sweep's job ``folder`` (for one-line failure reasons), or None."""
        ...


@runtime_checkable
class LauncherCheck(Protocol):
    """Optional member of a :class:`Launcher`: refuse a plan the target cannot run, before anything is submitted."""

    def check(self, plan: Any, *, dry_run: bool) -> list[str]:
        """Raise :class:`aotbench.errors.UserError` (one line) for a request the target cannot satisfy; return notes
        (e.g. what could not be checked)."""
        ...


@runtime_checkable
class LauncherDescribe(Protocol):
    """Optional member of a :class:`Launcher`: extra words for a plan's resource labels."""

    def describe(self, resources: Any) -> list[str]:
        """Words (e.g. a partition name) added to the label of a job's ``resources``."""
        ...


# ------------------------------------------------------------------------------------------------ the contracts
@dataclass(frozen=True)
class Contract:
    """What a registered object of one kind must be.

    ``protocol``: the required members. ``form``: ``"class"`` (its instances, built with no arguments but
    parameters, carry the members), ``"callable"`` (a function, or a class whose instances are called), or
    ``"factory"`` (the object itself is called, a class through its constructor). ``optional``: Protocols of
    optional methods, checked when present; ``instance``: a Protocol the instances of a class-registered factory
    must meet; ``attributes``: optional data attributes and the types they may have.
    """

    protocol: type
    form: str
    optional: tuple[type, ...] = ()
    instance: type | None = None
    attributes: dict[str, tuple[type, ...]] = field(default_factory=dict)


#: kind -> its contract
CONTRACTS: dict[str, Contract] = {
    "pairing": Contract(Pairing, "class", optional=(PoolCheck, PoolMemory, PairingState),
                        attributes={"stateful": (bool,), "noise_factor": (int,)}),
    "sampler": Contract(Sampler, "callable"),
    "guidance": Contract(Guidance, "class", optional=(GuidancePrepare,),
                         attributes={"needs": (set, frozenset, tuple, list)}),
    "dataset": Contract(Dataset, "class", attributes={"network": (str, type(None)), "defaults": (dict,)}),
    "network": Contract(Network, "factory", instance=NetworkModule, attributes={"list_shape": (tuple, list)}),
    "metric": Contract(Metric, "class"),
    "schedule": Contract(Schedule, "class", attributes={"uses_rho": (bool,)}),
    "objective": Contract(Objective, "class"),
    "launcher": Contract(Launcher, "class", optional=(LauncherCheck, LauncherDescribe),
                         attributes={"on_this_machine": (bool,), "own_processes": (bool,),
                                     "signal_delay_s": (int, type(None)), "unlisted": (str, type(None))}),
}


def _module_class() -> type | None:
    """``torch.nn.Module`` when torch is imported (a network class that subclasses it has imported it), else None:
    importing aotbench stays free of torch."""
    torch = sys.modules.get("torch")
    return None if torch is None else torch.nn.Module


def _members(protocol: type) -> list[str]:
    """The members a Protocol declares (its own, in definition order)."""
    return [name for name, value in vars(protocol).items()
            if callable(value) and (not name.startswith("_") or name == "__call__")]


def _drop_first(sig: inspect.Signature) -> inspect.Signature:
    """``sig`` without its first parameter (``self`` of a method looked up on its class)."""
    return sig.replace(parameters=list(sig.parameters.values())[1:])


def _plain(sig: inspect.Signature) -> inspect.Signature:
    """``sig`` without annotations, for one-line messages."""
    return sig.replace(parameters=[p.replace(annotation=p.empty) for p in sig.parameters.values()],
                       return_annotation=inspect.Signature.empty)


def _method_signature(cls: type, name: str) -> inspect.Signature | str | None:
    """The signature ``cls``'s instances are called with for method ``name`` (no self); None when the class does not
    define it, a phrase when it is not a method."""
    foreign = (object, _module_class())  # nn.Module's placeholder forward accepts anything: not the plugin's own
    owner = next((k for k in cls.__mro__ if k not in foreign and name in vars(k)), None)
    if owner is None:
        return None
    raw = vars(owner)[name]
    if isinstance(raw, staticmethod):
        return inspect.signature(raw.__func__)
    if isinstance(raw, classmethod):
        return _drop_first(inspect.signature(raw.__func__))
    if inspect.isfunction(raw):
        return _drop_first(inspect.signature(raw))
    if callable(raw):
        return inspect.signature(raw)
    return f"{name} is {type(raw).__name__}, not a method"


def _calls(sig: inspect.Signature) -> list[tuple[list[str], list[str]]]:
    """The calls the engine makes of a Protocol member: (positional names, keyword names), with every argument and
    with the required ones only."""
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keyword = [p for p in params if p.kind == p.KEYWORD_ONLY]
    full = ([p.name for p in positional], [p.name for p in keyword])
    required = ([p.name for p in positional if p.default is p.empty],
                [p.name for p in keyword if p.default is p.empty])
    return [full] if full == required else [full, required]


def _spell(name: str, call: tuple[list[str], list[str]]) -> str:
    """A call as text: ``pair(data, noise, labels)``, ``wrap(denoise, context=...)``."""
    positional, keyword = call
    return f"{name}({', '.join([*positional, *(f'{k}=...' for k in keyword)])})"


def _accepts(sig: inspect.Signature, call: tuple[list[str], list[str]]) -> bool:
    """Whether a callable of signature ``sig`` can be called with these positional and keyword arguments."""
    positional, keyword = call
    try:
        sig.bind(*positional, **{k: k for k in keyword})
    except TypeError:
        return False
    return True


def _member_problem(name: str, sig: inspect.Signature, wanted: inspect.Signature) -> str | None:
    """Why ``sig`` (a plugin member's) cannot take the engine's calls of ``wanted`` (the Protocol's), or None."""
    for call in _calls(wanted):
        if not _accepts(sig, call):
            return f"{name}{_plain(sig)} cannot be called as {_spell(name, call)}"
    return None


def _signature(obj) -> inspect.Signature | None:
    """``obj``'s call signature, or None where Python has none to give (some builtins)."""
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return None


def _check_methods(cls: type, protocol: type, required: bool) -> str | None:
    """The first problem of ``cls``'s methods against ``protocol``'s (a missing one only when ``required``)."""
    for name in _members(protocol):
        sig = _method_signature(cls, name)
        wanted = _drop_first(inspect.signature(vars(protocol)[name]))
        if sig is None:
            if required:
                return f"it has no {name}{_plain(wanted)} (required by aotbench.contracts.{protocol.__name__})"
            continue
        if isinstance(sig, str):
            return sig
        if (why := _member_problem(name, sig, wanted)) is not None:
            return why
    return None


def problem(kind: str, obj: Any) -> str | None:
    """Why ``obj``, registered as a ``kind``, does not meet the kind's contract (one line naming the member at
    fault), or None when it does. See the module docstring for what is checked."""
    contract = CONTRACTS[kind]
    proto = contract.protocol
    if contract.form == "class" and not inspect.isclass(obj):
        return (f"it is of type {type(obj).__name__}, not a class (whose instances have "
                f"{', '.join(_members(proto))}; see aotbench.contracts.{proto.__name__})")
    if not callable(obj):
        return f"it is of type {type(obj).__name__}, not callable (see aotbench.contracts.{proto.__name__})"
    if inspect.isclass(obj) and contract.form in ("class", "callable"):
        ctor = _signature(obj)
        if ctor is not None and not _accepts(ctor, ([], [])):
            return (f"its constructor {obj.__name__}{_plain(ctor)} cannot be called without arguments (every parameter "
                    f"needs a default)")
        if (why := _check_methods(obj, proto, required=True)) is not None:
            return why
    else:  # a function, or a factory called as it is
        sig = _signature(obj)
        wanted = _drop_first(inspect.signature(proto.__call__))
        if sig is not None and (why := _member_problem(getattr(obj, "__name__", kind), sig, wanted)) is not None:
            return why
    if inspect.isclass(obj):
        for optional in contract.optional:
            if (why := _check_methods(obj, optional, required=False)) is not None:
                return why
        module = _module_class()
        if contract.instance is not None and module is not None and issubclass(obj, module):
            if (why := _check_methods(obj, contract.instance, required=True)) is not None:
                return why
    for attr, types in contract.attributes.items():
        if attr not in dir(obj) or isinstance(inspect.getattr_static(obj, attr), property):
            continue  # absent, or computed per instance: nothing to check on the registered object
        value = getattr(obj, attr)
        if not isinstance(value, types):
            return (f"its {attr} is {type(value).__name__}, not {' or '.join(t.__name__ for t in types)} (see "
                    f"aotbench.contracts.{proto.__name__})")
    if kind == "pairing" and inspect.isclass(obj) and getattr(obj, "stateful", False) is True:
        if (why := _check_methods(obj, PairingState, required=True)) is not None:
            return why
        sig = _method_signature(obj, "pair")
        if isinstance(sig, inspect.Signature) and not _accepts(sig, (["data", "noise", "labels"], ["index"])):
            return f"it is stateful, but pair{_plain(sig)} cannot be called as pair(data, noise, labels, index=...)"
    needs = getattr(obj, "needs", None) if kind == "guidance" else None
    if isinstance(needs, (set, frozenset, tuple, list)) and set(needs) - GUIDANCE_NEEDS:
        return (f"its needs name {', '.join(map(repr, sorted(set(needs) - GUIDANCE_NEEDS, key=str)))}, not among "
                f"{', '.join(sorted(GUIDANCE_NEEDS))}")
    return None
