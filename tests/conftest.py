"""Shared fixtures: small, fast configurations (2-D toy sets and 8x8 digits train in seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aotbench.config import TrainConfig, resolve
from aotbench.datasets import bind_data
from aotbench.plugins import Component, Registry, get_registry

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def registry() -> Registry:
    return get_registry()


def with_components(base: Registry, *components: Component) -> Registry:
    """A registry with extra components, as if a plugin had registered them."""
    return Registry([*base, *components])


def tiny_train(registry, **kw) -> TrainConfig:
    """A 2-D training config that runs in about a second."""
    base = dict(dataset="moons", network="mlp:width=64:depth=2", pairing="aot", seed=0, train_steps=60, batch=64, pool=256)
    base.update(kw)
    if "objective" in base:
        base["objective"] = resolve(registry, "objective", base["objective"])
    return bind_data(registry, TrainConfig(dataset=resolve(registry, "dataset", base.pop("dataset")),
                                           network=resolve(registry, "network", base.pop("network")),
                                           pairing=resolve(registry, "pairing", base.pop("pairing")), **base))


def run_cli(*args, env=None, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    """``python -m aotbench ...`` in a fresh interpreter (what a user types)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "aotbench", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
