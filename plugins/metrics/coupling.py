"""``coupling``: how the model's training coupling paired noise with data, measured on the pools it trained on.

The numbers are summed during training, pool by pool (:func:`aotbench.pool.coupling_stats`), and kept in the
checkpoint; a model trained before they were kept gets them by an exact replay of its pairing
(:func:`aotbench.train.coupling_diagnostics`). They belong to the model, so every cell of a model has the same ones.

- ``pair_cost_ratio``: mean paired L2 cost over the mean independent cost of the same pools: 1 for independent
  pairing, lower the more the coupling shortens the straight paths it trains on (AOT's transport cost, Kim et al.
  2024, Sec. 3; LOOM-CFM reports the same pre/post cost);
- ``noise_ks_p``: Kolmogorov-Smirnov p-value of the squared norms of the noise actually used against chi-squared
  with d degrees of freedom (their law under N(0, I)): a bijective pairing uses every drawn noise once and cannot
  move it, a nearest-of-k choice (Improved Immiscible Diffusion, Li et al. 2025) shifts it toward the data;
- ``noise_mean_z`` (largest |coordinate mean| in standard errors) and ``noise_cov_max`` (largest |entry| of the
  sample covariance minus I, over up to 64 coordinates): the mean and covariance extremes of the used noise;
- ``noise_n`` / ``noise_ks_n``: the noise vectors of every pool drawn (a run that ends inside a pool counts all of
  it), and those in the KS test (at most 10 000, evenly from every pool).
"""

from aotbench import hookimpl


class Coupling:
    """The model's coupling diagnostics (per model, from training): cost ratio and the used noise's normality."""

    def compute(self, ctx):
        return ctx.coupling()


@hookimpl
def register_metrics(register):
    register("coupling", Coupling, default=True)
