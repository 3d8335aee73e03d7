"""``fd``: Frechet distance in the dataset's own feature space (fast on a CPU; raw coordinates for 2-D data).

The reference is the train split, as EDM's FID uses the training set. Numbers from different extractors are never
comparable, so the extractor's name is recorded beside the value (``fd_extractor``).
"""

from aotbench import hookimpl
from aotbench.frechet import frechet_from_features


class FD:
    """Frechet distance to the train split in the dataset's domain features (labeled with its extractor)."""

    def compute(self, ctx):
        value = frechet_from_features(ctx.features(ctx.samples), ctx.reference_features)
        return {"fd": value, "fd_extractor": ctx.splits.features.name}


@hookimpl
def register_metrics(register):
    register("fd", FD, default=True)
