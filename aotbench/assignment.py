"""Building blocks shared by pairing plugins: cost matrices, per-class blocks, total cost, and the exact OT plan of
two equal pools as a permutation (:func:`emd_permutation`).

Costs: ``"l2"`` is the plain Euclidean distance ||x - z|| (the paper's ``torch.cdist``); ``"sqeuclidean"``
is ||x - z||^2 (W2's ground cost, and torchcfm's). They give different optimal permutations for pools of a few
hundred and more.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .errors import UserError

COSTS = ("l2", "sqeuclidean")

#: what a non-finite cost means for the user, and why it is refused (see :func:`check_finite`)
NON_FINITE = ("the data or noise holds non-finite values, or values so large that the float32 cost overflows "
              "(|x| above about 1e19: its square is inf); check the dataset")


def check_cost(cost: str) -> None:
    """Raise ValueError unless ``cost`` is one of :data:`COSTS`."""
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {', '.join(COSTS)}, got {cost!r}")


def all_finite(c: torch.Tensor | np.ndarray) -> bool:
    """Whether every entry of ``c`` is finite, in about one pass.

    A finite sum proves it (one inf or NaN entry makes the sum inf or NaN); only a sum that overflows needs the
    entrywise test. Measured on a 2048 x 2048 float32 cost here: ``torch.isfinite(c).all()`` 30-65 ms, this 2-3 ms.
    """
    if isinstance(c, torch.Tensor) and c.device.type != "cpu":
        return bool(torch.isfinite(c.sum())) or bool(torch.isfinite(c).all())
    a = c.detach().numpy() if isinstance(c, torch.Tensor) else np.asarray(c)
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(a.sum())) or bool(np.isfinite(a).all())


def check_finite(c: torch.Tensor | np.ndarray, who: str) -> None:
    """Refuse a cost matrix with an inf or NaN entry, in one line naming the pairing ``who``, before a solver sees it.

    Why: the solvers assume finite costs and fail badly otherwise. On a 2048 pool with one pixel of 1e20, lapjv
    writes out of bounds and glibc kills the process (``free(): invalid next size``, exit 134); on smaller pools it
    returns a non-bijection; lap returns a permutation that optimizes nothing; scipy and POT raise their own errors;
    Sinkhorn returns a NaN plan. Finite float32 data overflow easily: the cost is computed in float32, whose
    largest value is about 3.4e38, so (1e20)^2 is inf.
    """
    if not all_finite(c):
        raise UserError(f"pairing '{who}': the cost matrix holds inf or NaN: {NON_FINITE}")


def cost_matrix(x: torch.Tensor, z: torch.Tensor, cost: str = "l2", chunk: int = 0, device=None,
                max_bytes: float | None = None, who: str | None = None) -> torch.Tensor:
    """C[i, j] = cost(x_i, z_j) as float32 [N, M] on the CPU, from one matrix product per row chunk.

    ``x`` [N, *S], ``z`` [M, *S]. ``||x||^2 + ||z||^2 - 2 x.z`` is computed in float32 on ``device`` (default: x's),
    ``chunk`` rows at a time (0 = all at once) so the temporary on the device stays chunk x M. ``max_bytes`` bounds
    the size of C itself: a larger pool fails before anything is allocated. A non-finite C is refused in one line
    naming the pairing ``who`` and the cause: NaN or inf in the data or the noise, or an overflow (see
    :func:`check_finite` for why).
    """
    check_cost(cost)
    n, m = x.shape[0], z.shape[0]
    if max_bytes is not None and n * m * 4 > max_bytes:
        raise MemoryError(f"a {n}x{m} cost matrix needs {n * m * 4 / 2**30:.2f} GiB, over the "
                          f"{max_bytes / 2**30:.2f} GiB budget (lower the pool, or raise max_memory_gb)")
    device = torch.device(device) if device is not None else x.device
    xf = x.reshape(n, -1).to(device, torch.float32)
    zf = z.reshape(m, -1).to(device, torch.float32)
    z2 = zf.pow(2).sum(1)
    out = torch.empty(n, m, dtype=torch.float32)
    step = chunk if chunk and chunk > 0 else n
    for lo in range(0, n, step):
        xc = xf[lo:lo + step]
        # on the CPU the product is written into C itself: no copy of the block (a 16 MB pass at 2048 x 2048)
        into = {"out": out[lo:lo + step]} if device.type == "cpu" else {}
        block = torch.addmm(xc.pow(2).sum(1, keepdim=True) + z2, xc, zf.T, alpha=-2.0, **into).clamp_min_(0)
        if cost == "l2":
            block.sqrt_()
        if not into:
            out[lo:lo + step] = block.cpu()
    if not all_finite(out):
        head = f"pairing '{who}'" if who else "cost_matrix"
        for part, t in (("data", x), ("noise", z)):
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise UserError(f"{head}: the {part} holds {bad} non-finite value(s) (NaN or inf), so the cost "
                                f"matrix does too; check the dataset")
        raise UserError(f"{head}: the cost matrix overflows float32 (largest |value|: {float(x.abs().max()):.3g} "
                        f"in the data, {float(z.abs().max()):.3g} in the noise; float32 squares overflow above "
                        f"about 1.8e19); check the dataset")
    return out


def total_cost(x: torch.Tensor, z: torch.Tensor, perm: torch.Tensor, cost: str = "l2") -> float:
    """sum_i cost(x_i, z_perm[i]), in float64 (the number every pairing is judged by)."""
    check_cost(cost)
    d2 = (x.reshape(x.shape[0], -1).double() - z[perm].reshape(z.shape[0], -1).double()).pow(2).sum(1)
    return float(d2.sqrt().sum() if cost == "l2" else d2.sum())


def canonical_ties(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """The same assignment, with the noises of identical data rows handed out in increasing index order.

    Why: a pool can hold one training image twice (pools run across epoch boundaries, and datasets have
    duplicates). Swapping the noises of two identical rows changes no cost, so every exact solver is right and each
    picks its own: `lap` and `lapjv` return different permutations for the same pool, and so would train different
    models under one configuration. Sorting within each group of equal rows makes an exact pairing a function of
    the pool alone, whichever solver found it; the total cost is unchanged.

    ``x`` [N, *S]; ``perm`` [N] (noise[perm[i]] is paired to x[i]). Candidate groups come from a random projection
    of at most 512 evenly spaced coordinates (equal rows get equal keys; at 2048 x 3072 it costs about 2 ms), and
    each candidate group is split into exactly equal rows.
    """
    n = x.shape[0]
    flat = x.reshape(n, -1)
    cols = flat[:, :: max(1, flat.shape[1] // 512)]
    probe = torch.randn(cols.shape[1], generator=torch.Generator().manual_seed(0)).to(flat.device, flat.dtype)
    key = (cols * probe).sum(1)
    order = torch.argsort(key, stable=True)
    sk = key[order]
    starts = [0, *((sk[1:] != sk[:-1]).nonzero().flatten() + 1).tolist(), n]
    out = None
    for a, b in zip(starts[:-1], starts[1:]):
        if b - a < 2:
            continue
        run = order[a:b].sort().values  # positions whose keys tie
        _, group_of = torch.unique(flat[run], dim=0, return_inverse=True)
        for g in group_of.unique():
            pos = run[group_of == g]
            if len(pos) > 1:
                out = perm.clone() if out is None else out
                out[pos] = out[pos].sort().values
    return perm if out is None else out


def per_class(labels: torch.Tensor | None, n: int, solve) -> torch.Tensor:
    """Solve the assignment within each class block and stitch the blocks into one permutation.

    ``solve(idx)`` gets the positions of one block and returns a local permutation ``q`` of ``range(len(idx))``:
    data[idx[i]] is paired with noise[idx[q[i]]]. The noise pool is partitioned by the same positions as the data,
    so no noise vector crosses a class: ``labels[perm[i]] == labels[i]`` for every i. Noise is i.i.d., so this
    partition is as good as any.
    """
    if labels is None:
        return torch.as_tensor(solve(torch.arange(n)), dtype=torch.long)
    labels = torch.as_tensor(labels)
    perm = torch.empty(n, dtype=torch.long)
    for c in torch.unique(labels):
        idx = (labels == c).nonzero().flatten()
        perm[idx] = idx[torch.as_tensor(solve(idx), dtype=torch.long)]
    return perm


def emd_permutation(c: np.ndarray, who: str, num_iter_max: int = 100_000,
                    max_iter_cap: int = 100_000_000) -> np.ndarray:
    """The optimal permutation for a square cost matrix ``c`` [n, n], by POT's network simplex run to optimality.

    Returns ``perm`` [n] (int64): row i is assigned column ``perm[i]``, minimizing sum_i c[i, perm[i]].

    With uniform weights over two pools of equal size every vertex of the transport polytope is a permutation matrix
    divided by n, and the network simplex ends on a vertex, so the optimal plan's row-wise argmax is the optimal
    assignment. POT stops at ``numItermax`` and then returns a *non-optimal* plan with only a warning; here the cap
    starts at ``num_iter_max`` and is raised tenfold until POT reports an optimal plan, and past ``max_iter_cap`` a
    RuntimeError is raised: a non-optimal pairing is never returned silently. A non-finite ``c`` is refused first,
    in one line naming the pairing ``who`` (POT would report an infeasible problem at every cap; see
    :func:`check_finite`). A plan that is not a permutation matrix (degenerate marginals) raises RuntimeError.
    """
    import ot

    check_finite(c, who)
    n = c.shape[0]
    w = np.full(n, 1.0 / n)
    cap = num_iter_max
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # POT warns on the cap; result_code decides
            plan, log = ot.emd(w, w, np.asarray(c, dtype=np.float64), numItermax=cap, log=True)
        if log["result_code"] == 1:
            break
        if cap >= max_iter_cap:
            raise RuntimeError(f"ot.emd did not reach optimality within {cap} iterations (POT says: "
                               f"{log['warning']})")
        cap = min(cap * 10, max_iter_cap)
    perm = plan.argmax(1)
    if len(np.unique(perm)) != n:
        raise RuntimeError("the optimal plan is not a permutation matrix (degenerate marginals)")
    return perm
