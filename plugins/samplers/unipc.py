"""``unipc``: UniPC (Zhao et al. 2023, arXiv 2302.04867) in EDM's sigma parameterization. NFE = steps.

The unified predictor-corrector, multistep, data prediction, B(h) of the "bh2" kind, deterministic, one denoiser
evaluation per step: the corrector reuses the evaluation at the next step's point, so it costs nothing.

**UniP-p, the predictor** (the paper's UniP-p in its data-prediction form, as both references implement it). With
x = y + sigma n (EDM: alpha = 1), lambda = -ln(sigma), a step from sigma_s to sigma_t, h = lambda_t - lambda_s, the
denoiser output m0 at s and the earlier outputs m_k at lambda_s + r_k h (r_k < 0, k = 1 .. p-1):

    x_t = (sigma_t / sigma_s) x_s + c0 m0 + c0 sum_k a_k (m_k - m0) / r_k,   c0 = 1 - e^{-h} = -expm1(-h),

where the weights solve sum_k a_k r_k^(n-1) = g_n, n = 1 .. p-1, with g_n = n! psi_{n+1}(h) / B(h),
psi_1 = c0, psi_{k+1} = 1/k! - psi_k / h (psi_k = h phi_k(-h), DPM-Solver's phi functions) and B(h) = c0. That makes
the scheme order p. "bh2" is the paper's choice B(h) = e^h - 1, written for its noise-prediction form; for data
prediction the authors' code (wl-zhao/UniPC ``uni_pc.py``, ``multistep_uni_pc_bh_update``) and diffusers'
``UniPCMultistepScheduler`` (0.42.1, ``multistep_uni_p_bh_update`` / ``multistep_uni_c_bh_update``) evaluate it at
-h, B = e^{-h} - 1, the factor that multiplies m0 (its sign cancels against those of psi); this module follows them.
As both references do, p = 2 uses the simplified weight a_1 = 1/2 (g_1 = 1/2 + O(h), which keeps order 2).

**UniC-p, the corrector** (the paper's UniC-p). Once the predictor's x_t has been evaluated, m_t = D(x_t; sigma_t),
the step from s is redone with the same history plus m_t at r = 1:

    x_t^c = (sigma_t / sigma_s) x_s + c0 m0 + c0 (sum_k a_k (m_k - m0) / r_k + a_p (m_t - m0)),

the weights now solving the p x p system for n = 1 .. p (p = 1 uses a_1 = 1/2, as both references do). UniC-p raises
the order of a UniP-p step to p + 1. The corrected x_t^c is the base of the next step, but m_t, the evaluation at the
uncorrected x_t, stands for D at sigma_t in the history: no second evaluation (the paper's multistep UniPC and both
references). So step i evaluates D at its x, corrects that x (for i > 0, at the order of the predictor that produced
it) and predicts x at sigma_{i+1}.

**Orders.** ``order`` p in 1 .. 3 (default 3). Warm-up: step i (from 0) predicts with order min(p, i + 1), as both
references. ``lower_order_final`` (default True, as both references): also at most ``steps - i``, the steps left
including this one, as diffusers' ``step()`` and the authors' ``sample()`` do (the authors' code counts its steps
without a final step to sigma = 0, diffusers' with it; this sampler's ``steps`` are diffusers'). So with p = 3 the
last step before sigma_min's step to 0 is second order. Two steps with p = 3 are therefore orders 1, 1; three are
1, 2, 1. Orders above 3 are refused: the references allow any order, but higher ones are untested here, and
diffusers recommends 3 for unconditional and 2 for guided sampling (its default is 2; this sampler's is 3, as the
issue asked).

**Checks.** On the analytic Gaussian (tests/test_samplers_multistep_dpm.py) the default converges with order 3.8
(rho = 7) and 3.2 (log-uniform) over 16-64 steps on the engine's kind of schedule, and with ``lower_order_final=False``
with order 4.0 over 64-256 steps (UniC-3). It equals diffusers' ``UniPCMultistepScheduler`` (bh2, ``predict_x0``,
``prediction_type="sample"``, driven with the same sigmas) to 2e-15 relative for orders 1-3, with and without
``lower_order_final``, at 3-32 steps.

**The step to sigma = 0** returns the denoiser output at the current (predicted, uncorrected) x, as ``dpmpp-2m``
does; diffusers (``final_sigmas_type="zero"``) gets the same value, since its step to 0 multiplies the corrected x by
sigma_t / sigma_s = 0. This sampler does not compute that discarded correction. A schedule that does not end in 0
ends with a predictor step to its last sigma, uncorrected (no evaluation is left to correct it with), as the
authors' ``sample()`` skips the corrector on its last step. NFE = steps (``len(sigmas) - 1``).

Shapes: ``x`` [B, *S], ``sigmas`` [steps + 1] (descending, ending in 0), result [B, *S] in ``x``'s dtype. Every
weight is a Python float computed from the schedule (a p x p float64 solve on the CPU), so nothing in a row depends
on another row. ``callback`` sees, at each evaluation, the x evaluated (the predictor's, before its correction).
Raises ValueError (the registry's ``check``, also called on entry) when ``order`` is not 1, 2 or 3;
``resolve`` refuses a non-integer ``order`` or a non-bool ``lower_order_final``.
"""

import math

import torch

from aotbench import hookimpl

MAX_ORDER = 3


def _weights(rks, h, c0):
    """UniPC's a_k for the ratios ``rks`` (history first, then 1 for the corrector's new point): R a = g."""
    p = len(rks)
    if p == 0:
        return []
    g, psi, fact = [], c0, 1.0  # psi_1 = h phi_1(-h)
    for n in range(1, p + 1):
        psi = 1 / fact - psi / h  # psi_{n+1} = 1/n! - psi_n / h
        g.append(fact * psi / c0)  # n! psi_{n+1} / B(h)
        fact *= n + 1
    R = torch.tensor([[r ** (n - 1) for r in rks] for n in range(1, p + 1)], dtype=torch.float64)
    return torch.linalg.solve(R, torch.tensor(g, dtype=torch.float64)).tolist()


def _update(x, s, s_next, ms, lams, p, m_new=None):
    """UniP-p from sigma ``s`` to ``s_next`` (``m_new`` None) or UniC-p with ``m_new`` = D at ``s_next``.

    ``ms``/``lams``: the denoiser outputs and their lambdas, newest last; ``ms[-1]`` is D at ``s``; uses the p - 1
    before it."""
    h = math.log(s) - math.log(s_next)
    c0 = -math.expm1(-h)
    lam0, m0 = lams[-1], ms[-1]
    rks = [(lams[-1 - k] - lam0) / h for k in range(1, p)]
    if m_new is None:
        a = [0.5] if p == 2 else _weights(rks, h, c0)
    else:
        a = [0.5] if p == 1 else _weights(rks + [1.0], h, c0)
    out = (s_next / s) * x + c0 * m0
    for k, (ak, rk) in enumerate(zip(a, rks), start=1):
        out = out + (c0 * ak / rk) * (ms[-1 - k] - m0)
    if m_new is not None:
        out = out + (c0 * a[-1]) * (m_new - m0)
    return out


def sample_unipc(denoise, x, sigmas, *, noise_sampler=None, callback=None, order: int = 3,
                 lower_order_final: bool = True):
    """UniPC (bh2, data prediction) of ``order`` 1-3; the corrector reuses the next evaluation; the step to sigma = 0
    returns the denoiser output."""
    check(order=order, lower_order_final=lower_order_final)
    n = len(sigmas) - 1
    ms, lams = [], []  # denoiser outputs and their lambdas, newest last (at most `order` kept)
    x_base, p_last = None, 0  # the corrected x the last predictor started from, and that predictor's order
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoise(x, sigmas[i])
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigmas[i], "denoised": denoised})
        if s_next == 0:
            return denoised
        if i > 0:  # UniC: redo the last step with the evaluation just made
            x = _update(x_base, float(sigmas[i - 1]), s, ms, lams, p_last, m_new=denoised)
        ms, lams = (ms + [denoised])[-order:], (lams + [-math.log(s)])[-order:]
        p = min(order, i + 1, n - i) if lower_order_final else min(order, i + 1)
        x_base, p_last = x, p
        x = _update(x, s, s_next, ms, lams, p)
    return x


def check(*, order, lower_order_final):
    if not 1 <= order <= MAX_ORDER:
        raise ValueError(f"order must be 1, 2 or 3, got {order}")


@hookimpl
def register_samplers(register):
    register("unipc", sample_unipc, check=check)
