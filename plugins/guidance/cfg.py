"""``cfg``: classifier-free guidance (Ho & Salimans 2022), D = D_uncond + w (D_cond - D_uncond).

It needs a class-conditional model trained with label dropout (the "no label" embedding must have been learned);
the engine refuses other models before any work starts. Both passes go through the engine's counter, so NFE
doubles. Written as (1 - w) D_uncond + w D_cond so that w = 0 and w = 1 give exactly the unconditional and the
conditional denoiser.
"""

from aotbench import hookimpl


class CFG:
    """Classifier-free guidance with scale w (w=1: the conditional model; both passes count toward NFE)."""

    needs = frozenset({"conditional", "label_dropout"})

    def __init__(self, *, w: float = 2.0):
        if w < 0:
            raise ValueError(f"w must be >= 0, got {w}")
        self.w = w

    def wrap(self, denoise, *, context):
        w = self.w

        def guided(x, sigma):
            return (1 - w) * context.uncond(x, sigma) + w * denoise(x, sigma)

        return guided


@hookimpl
def register_guidance(register):
    register("cfg", CFG)
