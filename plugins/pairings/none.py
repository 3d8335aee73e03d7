"""``none``: independent pairing, the EDM baseline (noise[i] goes with data[i])."""

import torch

from aotbench import hookimpl


class Independent:
    """Identity permutation: each sample keeps the noise drawn for it (standard diffusion training)."""

    def pair(self, data, noise, labels=None):
        return torch.arange(data.shape[0])


@hookimpl
def register_pairings(register):
    register("none", Independent, default=True)
