"""aotbench: a benchmark suite for noise-data pairing in diffusion training.

Plugins import :data:`hookimpl` from here; see :mod:`aotbench.hookspecs` for the contract.
"""

from .errors import UserError
from .plugins import hookimpl

__all__ = ["hookimpl", "UserError"]
