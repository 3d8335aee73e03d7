"""One place that turns a device name a user gives (``cpu``, ``cuda``, ``cuda:N``, ``auto``) into a torch device."""

from __future__ import annotations

from .errors import UserError


def resolve_device(name: str, local_rank: int | None = None) -> str:
    """The device for ``name``: ``auto`` is ``cuda`` when a GPU is visible, else ``cpu``; under DDP (``local_rank``
    given) ``cuda``/``auto`` with a GPU become ``cuda:<local_rank>``. Raises :class:`UserError` (one line) for an
    unknown name, or a CUDA device this machine does not have."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if local_rank is not None and name == "cuda" and torch.cuda.is_available():
        name = f"cuda:{local_rank}"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}' (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device '{name}' requested but no CUDA GPU is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device '{name}' requested but only {torch.cuda.device_count()} GPU(s) are present")
    return name
