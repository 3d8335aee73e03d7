"""The plugin contract: built-ins and third-party entry points register the same way, names are unique,
AOTBENCH_PLUGINS restricts loading, and `list` shows everything with its parameters and provider."""

from __future__ import annotations

import ast
import json
import textwrap

import pytest

from conftest import REPO, run_cli

PLUGIN = '''
import torch
from aotbench import hookimpl


class ReversePairing:
    """Pairs data i with noise n-1-i (a third-party test pairing)."""

    def __init__(self, *, shift: int = 0):
        self.shift = shift

    def pair(self, data, noise, labels=None):
        return torch.arange(data.shape[0]).flip(0).roll(self.shift)


@hookimpl
def register_pairings(register):
    register("{name}", ReversePairing)
'''


def make_plugin(root, dist="thirdparty-pairing", module="thirdparty_pairing", name="reverse", extra="", entry=None):
    """A real installed distribution: a module plus a *.dist-info with entry_points.txt, on a folder of sys.path.

    ``entry`` is the entry-point name (default: the module's name).
    """
    site = root / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(PLUGIN.format(name=name) + textwrap.dedent(extra))
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[aotbench]\n{entry or module} = {module}\n")
    return {"PYTHONPATH": str(site)}


def test_list_shows_the_pairings_with_parameters_and_provider():
    out = run_cli("list", "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = {(r["kind"], r["name"].rstrip(" *")): r for r in json.loads(out.stdout)}
    for name in ("none", "aot", "pot-exact", "sinkhorn", "paper", "torchcfm-emd"):
        assert ("pairing", name) in rows
        assert rows[("pairing", name)]["provided_by"].startswith("aotbench")
    for name in ("paper", "torchcfm-emd"):  # the benchmark's reference methods: listed, trainable, not default
        assert not rows[("pairing", name)]["name"].endswith("*")
    assert "per_class=True" in rows[("pairing", "paper")]["params"]
    assert "cost='l2'" in rows[("pairing", "aot")]["params"]
    assert "reg=0.05" in rows[("pairing", "sinkhorn")]["params"]
    for kind in ("sampler", "guidance", "dataset", "network", "metric"):
        assert any(k == kind for k, _ in rows)


def test_a_third_party_entry_point_plugin_is_listed_and_trains_by_name(tmp_path):
    env = make_plugin(tmp_path)
    out = run_cli("list", env=env)
    assert out.returncode == 0, out.stderr
    assert "reverse" in out.stdout and "thirdparty-pairing 0.1" in out.stdout and "shift=0" in out.stdout
    run = run_cli("run", "--dataset", "moons", "--network", "mlp:width=32:depth=1", "--pairing", "reverse:shift=3",
                  "--sampler", "euler", "--steps", "3", "--train-steps", "20", "--batch", "32", "--pool", "64",
                  "--n-samples", "50", "--metrics", "nfe", "--results", str(tmp_path / "res"), "--quiet", env=env)
    assert run.returncode == 0, run.stderr
    assert "reverse:shift=3" in run.stdout or "reverse" in run.stdout
    rec = json.loads(next((tmp_path / "res" / "run" / "cells").glob("*.json")).read_text())
    assert rec["config"]["train"]["pairing"] == {"name": "reverse", "shift": 3}


def test_aotbench_plugins_restricts_entry_point_plugins(tmp_path):
    env = make_plugin(tmp_path)
    assert "reverse" not in run_cli("list", env={**env, "AOTBENCH_PLUGINS": ""}).stdout
    assert "reverse" in run_cli("list", env={**env, "AOTBENCH_PLUGINS": "thirdparty-pairing"}).stdout
    assert "reverse" not in run_cli("list", env={**env, "AOTBENCH_PLUGINS": "something_else"}).stdout
    assert "aot" in run_cli("list", env={**env, "AOTBENCH_PLUGINS": ""}).stdout  # built-ins always load


def test_two_plugins_claiming_one_name_is_an_error_naming_both(tmp_path):
    env = make_plugin(tmp_path, name="aot")
    out = run_cli("list", env=env)
    assert out.returncode == 2
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "'aot' is registered twice" in line and "aotbench_plugins.pairings.aot" in line
    assert "thirdparty-pairing 0.1" in line


def test_a_misspelt_hook_fails_loudly(tmp_path):
    env = make_plugin(tmp_path, extra='''
        @hookimpl
        def register_pairing(register):
            pass
        ''')
    out = run_cli("list", env=env)
    assert out.returncode == 2
    assert "register_pairing" in out.stderr and "thirdparty_pairing" in out.stderr


@pytest.mark.parametrize("flag,value,expected", [
    ("--pairing", "hungarian",
     "unknown pairing 'hungarian' (available: aot, knn, loom, none, paper, pot-exact, sinkhorn, torchcfm-emd"),
    ("--dataset", "cifar100", "unknown dataset 'cifar100' (available:"),
    ("--network", "resnet", "unknown network 'resnet' (available:"),
    ("--pairing", "aot:costs=l2", "pairing 'aot' has no parameter costs"),
    ("--pairing", "aot:cost=l1", "pairing 'aot': cost must be one of l2, sqeuclidean"),
    ("--pool", "100", "pool 100 must be >= the per-rank batch 128 and a multiple of it"),
    ("--pool", "200", "pool 200 must be >= the per-rank batch 128 and a multiple of it"),
    ("--network", "unet", "network 'unet' cannot take data of shape (2,)"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, flag, value, expected):
    args = ["run", "--dataset", "moons", "--batch", "128", "--results", str(tmp_path), flag, value]
    if flag == "--dataset":
        args = ["run", "--results", str(tmp_path), flag, value]
    out = run_cli(*args)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert expected in out.stderr
    assert not any(tmp_path.iterdir())  # nothing written


# ---------------------------------------------------------------- plugins fail alone

TINY_RUN = ["run", "--dataset", "moons", "--network", "mlp:width=32:depth=1", "--sampler", "euler", "--steps", "3",
            "--train-steps", "20", "--batch", "32", "--pool", "64", "--n-samples", "50", "--metrics", "nfe", "--quiet"]


def test_a_plugin_that_fails_to_import_is_skipped_with_one_line_and_the_rest_works(tmp_path):
    env = make_plugin(tmp_path, dist="broken-pairing", module="broken_pairing", name="broken",
                      extra="import no_such_module_for_aotbench\n")
    make_plugin(tmp_path)  # a working plugin in the same folder still loads
    out = run_cli("list", env=env)
    assert out.returncode == 0, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "skipped plugin 'broken_pairing' (broken-pairing 0.1)" in out.stderr
    assert "ModuleNotFoundError: No module named 'no_such_module_for_aotbench'" in out.stderr
    assert "Traceback" not in out.stderr
    assert "reverse" in out.stdout and "aot" in out.stdout and "broken" not in out.stdout

    run = run_cli(*TINY_RUN, "--pairing", "none", "--results", str(tmp_path / "res"), env=env)
    assert run.returncode == 0, run.stderr  # a built-in-only run goes on

    need = run_cli(*TINY_RUN, "--pairing", "broken", "--results", str(tmp_path / "res2"), env=env)
    assert need.returncode == 2
    lines = need.stderr.strip().splitlines()
    assert len(lines) == 2 and "skipped plugin 'broken_pairing'" in lines[0], need.stderr
    assert "unknown pairing 'broken' (available:" in lines[1] and "'broken_pairing' (broken-pairing 0.1)" in lines[1]


def test_a_plugin_whose_hook_raises_is_skipped_whole_with_one_line(tmp_path):
    env = make_plugin(tmp_path, extra='''
        @hookimpl
        def register_datasets(register):
            raise RuntimeError("no licence key found")
        ''')
    out = run_cli("list", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == ("aotbench: skipped plugin 'thirdparty_pairing' (thirdparty-pairing 0.1): its "
                                  "register_datasets hook raised RuntimeError: no licence key found")
    assert "reverse" not in out.stdout and "aot" in out.stdout  # its pairing, registered first, is dropped too
    need = run_cli(*TINY_RUN, "--pairing", "reverse", "--results", str(tmp_path / "res"), env=env)
    assert need.returncode == 2 and "Traceback" not in need.stderr
    assert "unknown pairing 'reverse'" in need.stderr.strip().splitlines()[-1]
    assert "'thirdparty_pairing' (thirdparty-pairing 0.1)" in need.stderr.strip().splitlines()[-1]


def test_two_distributions_with_one_entry_point_name_load_the_first_and_say_so(tmp_path):
    a = make_plugin(tmp_path / "a", dist="pairing-a", module="pairing_a", name="rev-a", entry="shared")
    b = make_plugin(tmp_path / "b", dist="pairing-b", module="pairing_b", name="rev-b", entry="shared")
    env = {"PYTHONPATH": f"{a['PYTHONPATH']}:{b['PYTHONPATH']}"}
    out = run_cli("list", env=env)
    assert out.returncode == 0, out.stderr
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1 and "'shared'" in line, out.stderr
    assert "pairing-a 0.1" in line and "pairing-b 0.1" in line and "loaded only the first" in line
    assert "rev-a" in out.stdout and "rev-b" not in out.stdout  # the first on sys.path, as documented
    chosen = run_cli("list", env={**env, "AOTBENCH_PLUGINS": "pairing-b"})
    assert chosen.returncode == 0 and chosen.stderr == "", chosen.stderr
    assert "rev-b" in chosen.stdout and "rev-a" not in chosen.stdout


def test_aotbench_plugins_names_that_match_nothing_are_reported(tmp_path):
    env = make_plugin(tmp_path)
    out = run_cli("list", env={**env, "AOTBENCH_PLUGINS": "thirdparty-pairing,revers"})
    assert out.returncode == 0 and "reverse" in out.stdout
    assert out.stderr.strip() == ("aotbench: AOTBENCH_PLUGINS names no installed aotbench plugin: revers "
                                  "(entry points: thirdparty_pairing; distributions: thirdparty-pairing)")
    # distribution names compare as pip compares them; entry-point names are exact
    spelled = run_cli("list", env={**env, "AOTBENCH_PLUGINS": "Thirdparty_Pairing"})
    assert "reverse" in spelled.stdout and spelled.stderr == "", spelled.stderr


# ---------------------------------------------------------------- built-ins are independent plugins

def _imported_modules(path, package: str) -> set[str]:
    """Every module a source file imports (relative imports resolved against ``package``), and for ``from X import
    name`` also ``X.name`` (which may be a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            out.add(module)
            out.update(f"{module}.{a.name}" for a in node.names)
    return out


def test_no_built_in_plugin_imports_another():
    """Each built-in is a plugin like a third party's: shared building blocks live in the core (aotbench), so no
    module under plugins/ imports a built-in module other than itself (private helpers such as datasets/_disk.py,
    which register nothing, are not built-ins)."""
    from aotbench_plugins import BUILTINS

    builtins = {f"aotbench_plugins.{m}" for m in BUILTINS}
    root = REPO / "plugins"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        me = ".".join(["aotbench_plugins", *parts])
        package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
        for module in _imported_modules(path, package):
            hit = next((b for b in builtins if module == b or module.startswith(b + ".")), None)
            if hit is not None and hit != me:
                offenders.append(f"{path.relative_to(REPO)} imports {module}")
    assert not offenders, offenders
    assert builtins >= {"aotbench_plugins.pairings.aot", "aotbench_plugins.metrics.trajectory"}  # the scan sees them
