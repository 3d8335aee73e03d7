"""Typed plugin contracts (aotbench/contracts.py): every built-in meets its kind's Protocol, and a registered object
that lacks a required member or whose member cannot take the engine's calls is refused at registration, in one line
naming the component, its plugin and the member, while the plugin's other components load."""

from __future__ import annotations

import pytest
import torch

from aotbench import contracts, plugins
from aotbench.plugins import KINDS, get_registry
from conftest import run_cli
from test_plugins import TINY_RUN, make_plugin


def test_every_kind_has_a_contract():
    assert set(KINDS) <= set(contracts.CONTRACTS)


def test_every_built_in_meets_its_contract(registry):
    components = list(registry)
    assert {c.kind for c in components} == {k for k in KINDS if registry.names(k)}
    for c in components:
        assert contracts.problem(c.kind, c.obj) is None, (c.kind, c.name)
    for name in registry.names("pairing"):  # instances meet the Protocol at run time too
        assert isinstance(registry.get("pairing", name).build(), contracts.Pairing), name


# ---------------------------------------------------------------- what the check refuses, and how it says so

class _Good:
    def pair(self, data, noise, labels=None):
        return torch.arange(data.shape[0])


class _NoPair:
    def __init__(self, *, shift: int = 0):
        self.shift = shift


class _TwoArgs:
    def pair(self, data, noise):
        return torch.arange(data.shape[0])


class _NeedsPath:
    def __init__(self, path):
        self.path = path

    def pair(self, data, noise, labels=None):
        return torch.arange(data.shape[0])


class _BadCheckPool(_Good):
    def check_pool(self, pool):
        pass


def _pair_fn(data, noise, labels=None):
    return torch.arange(data.shape[0])


def _sampler(denoise, x, sigmas, *, noise_sampler=None, callback=None, eta: float = 1.0):
    return x


def _sampler_no_callback(denoise, x, sigmas, *, noise_sampler=None):
    return x


class _Typo:
    needs = frozenset({"conditonal"})

    def wrap(self, denoise, *, context):
        return denoise


class _Net(torch.nn.Module):
    def __init__(self, shape, num_classes=0, *, width: int = 8):
        super().__init__()

    def forward(self, x, c_noise):
        return x


class _Metric:
    compute = "curvature"


@pytest.mark.parametrize("kind,obj,expected", [
    ("pairing", _Good, None),
    ("pairing", _NoPair, "it has no pair(data, noise, labels=None) (required by aotbench.contracts.Pairing)"),
    ("pairing", _TwoArgs, "pair(data, noise) cannot be called as pair(data, noise, labels)"),
    ("pairing", _NeedsPath, "its constructor _NeedsPath(path) cannot be called without arguments"),
    ("pairing", _BadCheckPool, "check_pool(pool) cannot be called as check_pool(pool, shape)"),
    ("pairing", _pair_fn, "it is of type function, not a class (whose instances have pair"),
    ("sampler", _sampler, None),
    ("sampler", _sampler_no_callback, "cannot be called as _sampler_no_callback(denoise, x, sigmas, "
                                      "noise_sampler=..., callback=...)"),
    ("sampler", 3, "it is of type int, not callable"),
    ("guidance", _Typo, "its needs name 'conditonal', not among conditional, label_dropout"),
    ("network", _Net, "forward(x, c_noise) cannot be called as forward(x, c_noise, class_labels, augment_labels)"),
    ("metric", _Metric, "compute is str, not a method"),
])
def test_problem_names_the_member_at_fault(kind, obj, expected):
    why = contracts.problem(kind, obj)
    if expected is None:
        assert why is None
    else:
        assert why is not None and expected in why and "\n" not in why, why


def test_a_built_in_that_breaks_its_contract_is_a_bug_and_raises(monkeypatch):
    real = contracts.problem
    monkeypatch.setattr(contracts, "problem",
                        lambda kind, obj: ("it has no pair" if kind == "pairing" and getattr(obj, "__name__", "") == "AOT"
                                           else real(kind, obj)))
    plugins.reset()
    try:
        with pytest.raises(TypeError, match="built-in pairing 'aot' .* breaks its contract: it has no pair"):
            get_registry()
    finally:
        plugins.reset()


# ---------------------------------------------------------------- a third party's broken component, end to end

BROKEN = '''

class MissingPair:
    """A pairing without pair()."""

    def __init__(self, *, k: int = 1):
        self.k = k


class OldSignature:
    """A pairing written against an older contract: pair(data) only."""

    def pair(self, data):
        return torch.arange(data.shape[0])


@hookimpl
def register_pairings(register):  # replaces the template's hook: one hook, one good and two broken pairings
    register("brk-missing", MissingPair)
    register("brk-good", ReversePairing)
    register("brk-old", OldSignature)
'''


def test_a_third_party_component_missing_a_member_is_skipped_in_one_line_naming_it(tmp_path):
    env = make_plugin(tmp_path, dist="broken-members", module="broken_members", extra=BROKEN)
    out = run_cli("list", env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2, out.stderr
    assert lines[0] == ("aotbench: skipped pairing 'brk-missing' of plugin 'broken_members' (broken-members 0.1): it has "
                        "no pair(data, noise, labels=None) (required by aotbench.contracts.Pairing)")
    assert lines[1] == ("aotbench: skipped pairing 'brk-old' of plugin 'broken_members' (broken-members 0.1): "
                        "pair(data) cannot be called as pair(data, noise, labels)")
    assert "Traceback" not in out.stderr
    assert "brk-good" in out.stdout and "broken-members 0.1" in out.stdout  # the plugin's good pairing loads
    assert "brk-missing" not in out.stdout and "brk-old" not in out.stdout

    need = run_cli(*TINY_RUN, "--pairing", "brk-old", "--results", str(tmp_path / "res"), env=env)
    assert need.returncode == 2 and "Traceback" not in need.stderr
    last = need.stderr.strip().splitlines()[-1]
    assert "unknown pairing 'brk-old' (available:" in last
    assert "pairing 'brk-old' of 'broken_members' (broken-members 0.1)" in last
