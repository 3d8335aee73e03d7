"""``nfe``: network evaluations per sample, as counted by the engine (samplers never count themselves)."""

from aotbench import hookimpl


class NFE:
    """Network evaluations per sample (engine-counted; CFG's two passes count twice)."""

    def compute(self, ctx):
        ctx.samples  # noqa: B018 - sampling sets ctx.nfe
        return {"nfe": ctx.nfe}


@hookimpl
def register_metrics(register):
    register("nfe", NFE, default=True)
