"""The aotbench plugin contract.

Every strategy the suite compares, and every place its jobs can run, is contributed through these hooks: by the
built-ins in ``plugins/`` exactly as by a third-party package. A third-party package exposes a module under the
``aotbench`` entry-point group::

    [project.entry-points.aotbench]
    my_pairing = "my_package.my_module"

and implements any of the hooks below with :data:`aotbench.hookimpl`. Each hook receives a ``register`` callback;
call it once per component: ``register(name, obj, default=False, check=None)``. Names are unique per kind across
all plugins (a clash is an error naming both providers). ``default=True`` puts the component in the CLI's default
grid for its kind (for metrics: computed unless ``--metrics`` is given). ``check(**params)``, optional, raises ValueError for parameter
values outside their domain (classes do that in ``__init__``), so a bad value is refused before any work starts.

Parameters are read from signatures: every keyword-only parameter with a default (for classes, of ``__init__``) is a
user-settable parameter, shown by ``python -m aotbench list`` and set on the command line as ``name:key=value``.
Values must be JSON scalars (int, float, bool, str) so that configurations hash stably.

Shapes: ``N`` samples; ``*S`` the per-sample shape (``(2,)`` for 2-D sets, ``(C, H, W)`` for images).

Each kind's typed contract is a :class:`typing.Protocol` in :mod:`aotbench.contracts` (named in each hook below), with
the members' shapes, units, what they raise, and the optional members. Every ``register(name, obj)`` call is checked
against it: a third-party component that lacks a required member, or whose member cannot take the engine's calls, is
skipped with one line naming it, its plugin and the member.
"""

import pluggy

hookspec = pluggy.HookspecMarker("aotbench")


@hookspec
def register_pairings(register):
    """Register noise-data pairing strategies (contract: :class:`aotbench.contracts.Pairing`).

    ``obj`` is a class; ``obj(**params)`` has ``pair(data, noise, labels=None) -> perm`` where ``data`` is ``[P, *S]``,
    ``noise`` is ``[P, *S]`` standard normal, ``labels`` is ``[P]`` long when the model is class-conditional (else
    None), and ``perm`` is a ``[P]`` LongTensor
    such that ``noise[perm[i]]`` is paired with ``data[i]``. The engine checks that ``perm`` is a bijection. The
    instance must be picklable: the engine may run ``pair`` in a background worker process. Optional
    ``check_pool(pool, shape)`` raises ValueError for a pool it cannot handle (e.g. over a memory budget), so the
    engine refuses it before training starts. Optional ``noise_factor`` (int f: ``noise`` is ``[f P, *S]`` and
    ``perm`` an injection into it), ``(perm, own_noise)`` as the return value (noise the pairing drew itself), and
    ``stateful = True`` (state kept across pools and checkpointed: ``start``, ``state_dict``,
    ``load_state_dict``, and ``pair(..., index=...)``) are described in :class:`aotbench.contracts.Pairing`.
    """


@hookspec
def register_samplers(register):
    """Register ODE/SDE samplers (contract: :class:`aotbench.contracts.Sampler`).

    ``obj`` is a function ``sample(denoise, x, sigmas, *, noise_sampler=None, callback=None, **params) -> x0``.

    - ``denoise(x, sigma, stage=0, rows=None)`` returns D(x; sigma) (preconditioned, guided). ``sigma`` is a Python
      float, a 0-d tensor, or a ``[B]`` tensor with one sigma per row (adaptive samplers). Pass ``stage=1`` for a
      corrector evaluation (Heun's second); guidance such as DG treats the two differently. A sampler that evaluates
      only some rows of its batch passes their indices as ``rows`` (a LongTensor), so their class labels go along.
    - ``sigmas`` is a descending 1-d tensor ending in 0, and ``x = noise * sigmas[0]``.
    - ``noise_sampler(x)``, for stochastic samplers, returns fresh N(0, I) noise shaped like ``x``, each row from its
      own sample's stream (:class:`aotbench.seeds.PerSampleNoise`), so results never depend on the batch size.
      A sampler must not draw from torch's global generator, and nothing in a row may depend on other rows.
    - Samplers never count network evaluations; the engine does. ``callback``, if given, is called as
      ``callback({"i", "x", "sigma", "denoised"})`` after each evaluation on the sampler's main path.
    """


@hookspec
def register_guidance(register):
    """Register guidance methods (contract: :class:`aotbench.contracts.Guidance`).

    ``obj`` is a class; ``obj(**params)`` has:

    - ``needs``: a set of model capabilities it requires, from ``{"conditional", "label_dropout"}``; the engine
      refuses an impossible combination before any work starts;
    - ``wrap(denoise, *, context) -> denoise``: returns the guided denoiser ``f(x, sigma)`` (``sigma`` a scalar or
      one per row). ``context`` is an :class:`aotbench.evaluate.GuidanceContext` (the unguided and unconditional
      model denoisers, class labels, the dataset, a cache folder, a ``costs`` dict for extra evaluations the
      guidance spends, and ``stage``: 0 for a sampler step's first evaluation, 1 for a corrector's).
    """


@hookspec
def register_datasets(register):
    """Register datasets (contract: :class:`aotbench.contracts.Dataset`).

    ``obj`` is a class; ``obj(**params).load() -> aotbench.data.Splits`` gives train and held-out tensors in
    [-1, 1], optional labels (any non-negative integers: the engine maps them to 0..K-1 and fingerprints the
    content, :mod:`aotbench.datasets`), and a feature extractor for the domain Frechet distance. Optional class
    attributes: ``network`` names its default network, ``defaults`` (a dict of grid axes, e.g.
    ``{"train_steps": 3000}``) sets the training budget used when the user does not give one.
    """


@hookspec
def register_networks(register):
    """Register raw networks F, which the engine wraps in EDM preconditioning (contract:
    :class:`aotbench.contracts.Network`; the built module: :class:`aotbench.contracts.NetworkModule`).

    ``obj`` is a function or class ``obj(shape, num_classes, **params) -> nn.Module`` whose forward is
    ``F(x, c_noise, class_labels=None, augment_labels=None)``: ``x`` is ``[B, *S]``, ``c_noise`` is ``[B]``,
    ``class_labels`` is ``[B]`` long with ``num_classes`` meaning "no label" (for label dropout), or None.
    """


@hookspec
def register_metrics(register):
    """Register metrics computed for every evaluated cell (contract: :class:`aotbench.contracts.Metric`).

    ``obj`` is a class; ``obj(**params).compute(ctx) -> dict[str, float | str]`` where ``ctx`` is an
    :class:`aotbench.evaluate.EvalContext`, which computes samples, features and the reference trajectory lazily and
    shares them between metrics and cells of the same model (``ctx.memo(key, fn)``, keys from
    :mod:`aotbench.identity`). ``ctx.warn(message)`` attaches a one-line caveat to the cell's record. A metric's
    outputs are not part of the cell's identity: adding a metric later adds its outputs to existing records.
    """


@hookspec
def register_launchers(register):
    """Register launchers: where a sweep's jobs run (``sweep SPEC --launcher NAME``; docs/sweeps.md).

    ``obj`` is a class; ``obj(**params)`` has (:class:`aotbench.contracts.Launcher`):

    - ``on_this_machine`` (bool): the sweep schedules the jobs itself, at most ``array_parallelism`` at once, and
      checks this machine has the GPUs they ask for; false: whole arrays go to a scheduler, then the sweep waits.
    - ``own_processes`` (bool): a job may span several processes (DDP ranks); false: ranks are simulated.
    - ``signal_delay_s`` (int or None): default lead of the preemption signal (USR2) before a job's time limit; None
      when the launcher sends none.
    - ``unlisted`` (str or None): the state of a job neither the launcher nor an outcome file knows (``"LOST"`` for
      jobs of this machine; None when a scheduler may simply not list it yet).
    - ``submit(fn, payloads, job) -> list of handles``: run ``fn(payload)`` for each payload as one task of an array
      described by ``job`` (:class:`aotbench.sweep.JobSpec`: stage, resources, folder, tasks per node, the job id to
      wait for, requeues allowed). A handle has ``job_id`` (letters, digits, ``_.-``) and ``done()``. ``fn`` is
      :data:`aotbench.sweep.train_job` or ``eval_job``: a picklable callable that writes its own outcome file.
    - ``states(job_ids) -> {job_id: state}``: what the launcher knows now, in SLURM's state names (PENDING,
      RUNNING, COMPLETED, FAILED, ...); ids it does not know are left out.
    - ``log_path(folder, job_id) -> Path | None``: a job's error log, for one-line failure reasons.
    - optional ``check(plan, *, dry_run) -> list[str]``: raise :class:`aotbench.errors.UserError` for a request the
      target cannot satisfy, before anything is submitted; return notes (e.g. what could not be checked).
    - optional ``describe(resources) -> list[str]``: extra words for the plan's resource labels.
    """


@hookspec
def register_schedules(register):
    """Register sampling schedules: the noise levels a sampler steps through (``--schedule NAME``).

    ``obj`` is a class; ``obj(**params).sigmas(steps, sigma_min, sigma_max, rho, *, device=None)`` returns a float64
    tensor ``[steps + 1]``, strictly decreasing from ``sigma_max`` to ``sigma_min`` (index ``steps - 1``), then 0
    (:class:`aotbench.contracts.Schedule`). ``rho`` is the cell's; a schedule that ignores it says so with
    ``uses_rho = False``. The default schedule (``karras``, EDM's ρ-schedule) is registered with ``default=True``.
    """


@hookspec
def register_objectives(register):
    """Register training objectives: the noise levels, loss weight and preconditioning a model is trained with
    (``--objective NAME``; contract: :class:`aotbench.contracts.Objective`), all in EDM's σ-space, so that the
    trained model is a denoiser D(x; σ) that every sampler, guidance and metric uses unchanged
    (:mod:`aotbench.objective`).

    ``obj`` is a class; ``obj(**params)`` has:

    - ``sample_sigma(n, generator=None) -> sigma``: ``[n]`` float32 training noise levels (> 0, finite), drawn from
      ``generator`` only (the engine seeds it by seed, rank and pool);
    - ``weight(sigma) -> lambda``: the loss weight λ(σ), shaped like ``sigma``; the engine trains on
      λ(σ) ‖D(y + σ n; σ) − y‖², summed over coordinates;
    - ``precond(sigma) -> (c_skip, c_out, c_in, c_noise)``: for ``sigma`` ``[B, 1, ..., 1]`` float32, the
      coefficients of D(x; σ) = c_skip x + c_out F(c_in x, c_noise) (EDM Eq. 7), the first three broadcastable
      against ``[B, *S]``, ``c_noise`` ``[B]`` (what the network plugins receive).

    The objective is part of the model's identity. EDM's (``edm``) is registered with ``default=True``.
    """
