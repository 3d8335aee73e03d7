"""``curvature`` and ``trunc_err``: properties of the model's probability-flow ODE, from a fine reference solve.

The reference is the engine's reference solve (:meth:`aotbench.evaluate.EvalContext.solve_reference`: Heun with 64
steps at rho = 7, 127 NFE) from the cell's own noise and labels, through the cell's (guided) denoiser, computed once per
:func:`aotbench.identity.reference_key` (model, sample set, labels, guidance, sigma range) and shared by every cell
with that key.

- curvature = E_samples sum_i (sigma_i - sigma_{i+1}) / sigma_0 * ||d_i - c||^2 / ||c||^2, with d_i =
  (x_i - D(x_i; sigma_i)) / sigma_i the ODE slope dx/dsigma and c = (x_0 - x_N) / (sigma_0 - sigma_N) the chord
  slope; 0 for a straight path (Lee et al. 2023's straightness, normalized). It is accumulated on the fly as
  sum w||d||^2 - 2 c.sum w d + ||c||^2 sum w, so no trajectory of the full sample set is kept.
- trunc_err = sqrt(mean over samples and coordinates of (x_N - x_N^ref)^2), the cell sampler's end point against
  the reference end point from the same noise.
"""

from __future__ import annotations

import torch

from aotbench import hookimpl
from aotbench.identity import reference_key

#: samples whose reference trajectories are kept as artifacts (for figures)
KEEP = 8


def reference(ctx) -> dict:
    """The cell's reference solve and what these metrics derive from it, memoized per reference key.

    Keys: ``final`` (x at sigma = 0 [n, *S]), ``curvature`` (float), ``nfe``, ``sigmas``, and the first KEEP
    samples' trajectory ``keep_x`` [steps + 1, KEEP, *S] and denoiser outputs ``keep_denoised`` [steps, KEEP, *S].
    """
    cell = ctx.cell

    def solve():
        sigmas = ctx.reference_sigmas()
        steps = len(sigmas) - 1
        n, shape = cell.n_samples, ctx.splits.shape
        dim = int(torch.tensor(shape).prod())
        acc_d2 = torch.zeros(n, dtype=torch.float64)
        acc_d = torch.zeros(n, dim, dtype=torch.float64)
        keep_x = torch.zeros(steps + 1, min(KEEP, n), *shape)
        keep_d = torch.zeros(steps, min(KEEP, n), *shape)

        def callback(info):
            i, rows = info["i"], info["rows"]
            s, s_next = float(sigmas[i]), float(sigmas[i + 1])
            x, den = info["x"].double().cpu(), info["denoised"].double().cpu()
            d = ((x - den) / s).flatten(1)
            w = (s - s_next) / float(sigmas[0])
            acc_d2[rows] += w * d.pow(2).sum(1)
            acc_d[rows] += w * d
            k = max(0, min(KEEP, rows.stop) - rows.start)
            if k:
                keep_x[i, rows.start:rows.start + k] = x[:k].float()
                keep_d[i, rows.start:rows.start + k] = den[:k].float()

        x_final, nfe = ctx.solve_reference(callback)
        x0 = ctx.noise.double().flatten(1) * float(sigmas[0])
        chord = (x0 - x_final.double().flatten(1)) / float(sigmas[0])
        c2 = chord.pow(2).sum(1)
        per_sample = (acc_d2 - 2 * (chord * acc_d).sum(1) + c2) / c2
        keep_x[-1] = x_final[:KEEP]
        return {"final": x_final, "curvature": float(per_sample.mean()), "nfe": nfe,
                "keep_x": keep_x, "keep_denoised": keep_d, "sigmas": sigmas}

    ref = ctx.memo(("reference", reference_key(cell)), solve)
    ctx.artifacts.update({"trajectory_x": ref["keep_x"].numpy(), "trajectory_denoised": ref["keep_denoised"].numpy(),
                          "trajectory_sigmas": ref["sigmas"].numpy()})
    return ref


class Curvature:
    """Normalized straightness of the probability-flow ODE (0 = straight), on a 64-step Heun reference."""

    def compute(self, ctx):
        """``{"curvature": float}`` (dimensionless; see the module docstring)."""
        return {"curvature": reference(ctx)["curvature"]}


class TruncationError:
    """RMS per-coordinate distance between the sampler's x_N and the 64-step Heun reference x_N (same noise)."""

    def compute(self, ctx):
        """``{"trunc_err": float}``, in the data's units (see the module docstring)."""
        ref = reference(ctx)["final"]
        return {"trunc_err": float((ctx.samples.double() - ref.double()).pow(2).mean().sqrt())}


@hookimpl
def register_metrics(register):
    """Register ``curvature`` and ``trunc_err`` (both default metrics)."""
    register("curvature", Curvature, default=True)
    register("trunc_err", TruncationError, default=True)
