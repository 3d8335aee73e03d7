"""``fd``: Frechet distance in the dataset's own feature space (fast on a CPU; raw coordinates for 2-D data).

The reference is the train split, as EDM's FID uses the training set. Numbers from different extractors are never
comparable, so the extractor's name is recorded beside the value (``fd_extractor``), with the sample count
(``fd_n``), the feature dimension (``fd_dim``), the reference (``fd_ref``: the train split's data fingerprint) and
a flag for a rank-deficient sample covariance (``fd_rank_deficient``: n <= dim, which biases FD upward), and the
extractor's accuracy on the held-out split (``fd_extractor_accuracy``, a fraction; None for raw coordinates and
unlabeled data): features of a classifier that cannot tell the classes apart make a weak FD.
"""

from aotbench import hookimpl
from aotbench.frechet import frechet_from_features


class FD:
    """Frechet distance to the train split in the dataset's domain features (labeled with its extractor)."""

    def compute(self, ctx):
        feats = ctx.features(ctx.samples)
        n, dim = feats.shape
        if n <= dim:
            ctx.warn(f"fd: {n} samples <= {dim} feature dimensions: the sample covariance is rank-deficient and FD "
                     f"is biased upward; use more samples")
        value = frechet_from_features(feats, ctx.reference_features)
        return {"fd": value, "fd_extractor": ctx.splits.features.name, "fd_n": n, "fd_dim": dim,
                "fd_ref": f"train:{ctx.splits.fingerprint}", "fd_rank_deficient": n <= dim,
                "fd_extractor_accuracy": getattr(ctx.splits.features, "heldout_accuracy", None)}


@hookimpl
def register_metrics(register):
    register("fd", FD, default=True)
