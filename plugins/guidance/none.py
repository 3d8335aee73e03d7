"""``none``: the model's own denoiser, unguided."""

from aotbench import hookimpl


class NoGuidance:
    """Unguided sampling: D is the (conditional, if the model is) EMA denoiser."""

    needs: frozenset = frozenset()

    def wrap(self, denoise, *, context):
        return denoise


@hookimpl
def register_guidance(register):
    register("none", NoGuidance, default=True)
