"""The plugin guide's examples are real: every ```python block of docs/plugins.md is a complete plugin.

Each block is executed and registered with a plugin manager built on aotbench's hook spec (pluggy checks its hook
names and signatures); then all of them are installed as one third-party distribution (a module per block and a
*.dist-info naming them under the "aotbench" entry-point group, as tests/test_plugins.py does) and run end to end by
``python -m aotbench run`` on a tiny conditional 2-D grid. Each example is then held to what it claims: the pairing
changes the model, the sampler's NFE is what the engine counts, the guidance's extra passes are counted, the
dataset's labels are mapped, the network's layers are the ones trained, the metric's value is in the record.

The other docs are held too: links stay in the repository and resolve (anchors included), and docs/sweeps.md has a
row for every key a sweep spec accepts and shows sweeps/example.toml as it is.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pluggy
import pytest
import torch

from aotbench import hookspecs
from aotbench.edm import karras_sigmas
from aotbench.plugins import KINDS
from aotbench.pool import check_bijection
from aotbench.storage import load_checkpoint
from conftest import REPO, run_cli

DOC = REPO / "docs" / "plugins.md"
#: every hook of the contract (a block may implement any one of them)
HOOKS = set(KINDS.values())
DIST = "aotbench-doc-examples"
#: the hooks whose examples this file runs end to end, and what each registers (the names the run below uses)
NAMES = {"register_pairings": "sliced", "register_samplers": "midpoint", "register_guidance": "cfg-interval",
         "register_datasets": "rings", "register_networks": "film-mlp", "register_metrics": "nearest",
         "register_launchers": "subprocesses", "register_schedules": "linear", "register_objectives": "eps"}
STEPS, N_SAMPLES = 4, 60


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def hooks_of(namespace: dict) -> list[str]:
    """The functions of a module namespace marked with aotbench's hookimpl."""
    return [k for k, v in namespace.items() if callable(v) and hasattr(v, "aotbench_impl")]


@pytest.fixture(scope="module")
def examples() -> dict[str, tuple[str, dict]]:
    """hook name -> (source, executed namespace) of each example; each block implements exactly one hook."""
    out = {}
    for i, source in enumerate(python_blocks()):
        namespace: dict = {"__name__": f"doc_example_{i}"}
        exec(compile(source, f"{DOC}:python block {i + 1}", "exec"), namespace)
        hooks = hooks_of(namespace)
        assert len(hooks) == 1 and hooks[0] in HOOKS, f"python block {i + 1} implements {hooks}, not one hook"
        assert hooks[0] not in out, f"two examples implement {hooks[0]}"
        out[hooks[0]] = (source, namespace)
    return out


def test_every_hook_has_one_example_that_registers_with_the_hook_spec(examples):
    assert set(NAMES) <= set(examples), f"no example for {sorted(set(NAMES) - set(examples))}"
    for hook, (_, namespace) in examples.items():
        pm = pluggy.PluginManager("aotbench")
        pm.add_hookspecs(hookspecs)
        module = type("Example", (), {hook: staticmethod(namespace[hook])})
        pm.register(module, name=hook)  # pluggy refuses a hook the spec lacks, or parameters it does not have
        pm.check_pending()
        registered = []
        getattr(pm.hook, hook)(register=lambda name, obj, default=False, check=None: registered.append(name))
        assert len(registered) == 1
        if hook in NAMES:
            assert registered == [NAMES[hook]]


@pytest.fixture(scope="module")
def site(tmp_path_factory, examples):
    """The examples installed as one distribution: a module per example, entry points naming them."""
    root = tmp_path_factory.mktemp("docs-site")
    entries = []
    for hook, (source, _) in sorted(examples.items()):
        module = f"aotbench_doc_{hook.removeprefix('register_')}"
        (root / f"{module}.py").write_text(source)
        entries.append(f"{NAMES.get(hook, module)} = {module}")
    info = root / f"{DIST.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DIST}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[aotbench]\n" + "\n".join(entries) + "\n")
    return {"PYTHONPATH": str(root), "AOTBENCH_PLUGINS": DIST}


@pytest.fixture(scope="module")
def run(tmp_path_factory, site):
    """One `run` over every example: 2 models (none, sliced) x 2 samplers x 2 guidances = 8 cells."""
    results = tmp_path_factory.mktemp("docs-results")
    out = run_cli("run", "--dataset", "rings", "--network", "film-mlp:width=32:depth=1",
                  "--pairing", "none,sliced", "--sampler", "euler,midpoint", "--guidance", "none,cfg-interval",
                  "--steps", str(STEPS), "--conditional", "true", "--label-dropout", "0.2", "--train-steps", "50",
                  "--batch", "32", "--pool", "64", "--n-samples", str(N_SAMPLES), "--metrics", "nfe,fd,nearest",
                  "--results", str(results), "--quiet", env=site)
    assert out.returncode == 0, out.stderr
    records = [json.loads(p.read_text()) for p in sorted((results / "run" / "cells").glob("*.json"))]
    assert len(records) == 8
    return results, records, out


def cell(records, pairing="sliced", sampler="euler", guidance="none"):
    found = [r for r in records if r["config"]["train"]["pairing"]["name"] == pairing
             and r["config"]["sampler"]["name"] == sampler and r["config"]["guidance"]["name"] == guidance]
    assert len(found) == 1
    return found[0]


def test_list_shows_every_example_with_its_parameters_and_distribution(site):
    out = run_cli("list", "--format", "json", env=site)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(out.stdout)}
    for hook, name in NAMES.items():
        kind = next(k for k, h in KINDS.items() if h == hook)
        assert rows[(kind, name)]["provided_by"] == f"{DIST} 0.1"
    assert rows[("pairing", "sliced")]["params"] == "seed=0, per_class=True"
    assert rows[("sampler", "midpoint")]["params"] == "geometric=True"
    assert rows[("network", "film-mlp")]["params"] == "width=128, depth=2"


def test_pairing_example_is_a_bijection_and_changes_the_model(examples, run):
    _, records, _ = run
    sliced = examples["register_pairings"][1]["Sliced"](seed=1)
    data, noise = torch.randn(64, 2), torch.randn(64, 2)
    labels = torch.arange(64) % 3
    for lab in (None, labels):
        perm = check_bijection(sliced.pair(data, noise, lab), 64, "sliced")
        if lab is not None:
            assert torch.equal(labels[perm], labels)  # per class: every noise index stays in its class's rows
    rec = cell(records)
    assert rec["config"]["train"]["pairing"] == {"name": "sliced", "per_class": True, "seed": 0}
    # same seeds, data order and noise draws as the `none` model: only the pairing differs, so the samples do
    assert rec["metrics"]["fd"] != cell(records, pairing="none")["metrics"]["fd"]
    assert rec["timings"]["pair_seconds"] > 0


def test_sampler_example_nfe_is_what_the_engine_counts(run):
    _, records, _ = run
    for pairing in ("none", "sliced"):
        assert cell(records, pairing, "midpoint")["metrics"]["nfe"] == 2 * STEPS - 1
        assert cell(records, pairing, "euler")["metrics"]["nfe"] == STEPS


def test_guidance_example_pays_a_second_pass_only_inside_its_interval(run):
    _, records, _ = run
    sigmas = karras_sigmas(STEPS)[:-1].float()  # the float32 sigmas the guidance sees
    inside = int(((sigmas > 0.3) & (sigmas <= 5.0)).sum())
    assert 0 < inside < STEPS
    guided, plain = cell(records, guidance="cfg-interval"), cell(records)
    assert guided["config"]["guidance"] == {"name": "cfg-interval", "sigma_hi": 5.0, "sigma_lo": 0.3, "w": 2.0}
    assert guided["metrics"]["nfe"] == STEPS + inside
    assert guided["metrics"]["nearest"] != plain["metrics"]["nearest"]


def test_dataset_example_labels_are_mapped_and_recorded(run):
    _, records, _ = run
    for rec in records:
        assert rec["data"]["classes"] == [1, 2]
        assert rec["config"]["train"]["dataset"] == {"name": "rings", "data_seed": 0, "n_heldout": 1000,
                                                     "n_train": 4000, "width": 0.05}
        assert rec["metrics"]["fd_extractor"] == "raw-2d"


def test_network_example_is_the_network_trained(run):
    results, records, _ = run
    rec = cell(records)
    assert rec["config"]["train"]["network"] == {"name": "film-mlp", "depth": 1, "width": 32}
    ema = load_checkpoint(results / "models" / f"{rec['train_key']}.pt", "aotbench-model-v1")["ema"]
    assert ema["net.noise.2.weight"].shape == (64, 32)  # scale and shift for width 32
    assert ema["net.label.weight"].shape == (3, 64)  # two classes plus "no label"
    assert len([k for k in ema if k.startswith("net.hidden.") and k.endswith(".weight")]) == 1


def test_metric_example_value_warning_and_parameters_are_in_the_record(examples, run):
    results, records, out = run
    rings = examples["register_datasets"][1]["Rings"]().load()
    for rec in records:
        with np.load(results / "run" / "artifacts" / f"{rec['cell_key']}.npz") as art:
            samples = torch.from_numpy(art["samples"]).double()  # the first 64 samples: here, all of them
        assert len(samples) == N_SAMPLES
        expected = torch.cdist(samples, rings.train.double()).min(dim=1).values.mean()
        assert rec["metrics"]["nearest"] == pytest.approx(float(expected), rel=1e-6)
        assert rec["metrics"]["nearest_n"] == N_SAMPLES and rec["metrics"]["nearest_ref_n"] == 4000
        assert rec["metric_params"]["nearest"] == {"max_train": 10000}
        assert f"nearest: {N_SAMPLES} samples; the mean is noisy (use at least 100)" in rec["warnings"]
    assert "nearest" in out.stdout.splitlines()[0]  # a table column, like the built-in metrics


def test_schedule_example_is_uniform_in_sigma_and_a_run_samples_on_it(examples, site, tmp_path):
    linear = examples["register_schedules"][1]["Linear"]()
    s = linear.sigmas(5, 0.002, 80.0, 7.0)
    assert torch.allclose(torch.diff(s[:-1]), torch.full((4,), (0.002 - 80.0) / 4, dtype=torch.float64))
    out = run_cli("run", "--dataset", "moons", "--network", "mlp:width=16:depth=1", "--pairing", "none",
                  "--sampler", "euler", "--steps", "4", "--schedule", "karras,linear", "--train-steps", "20",
                  "--batch", "32", "--pool", "64", "--n-samples", "40", "--metrics", "nfe,fd", "--results",
                  str(tmp_path), "--quiet", env=site)
    assert out.returncode == 0, out.stderr
    records = [json.loads(p.read_text()) for p in (tmp_path / "run" / "cells").glob("*.json")]
    fd = {r["config"]["schedule"]["name"]: r["metrics"]["fd"] for r in records}
    assert set(fd) == {"karras", "linear"} and fd["karras"] != fd["linear"]


def test_objective_example_trains_on_the_noise_prediction_loss_and_a_run_trains_with_it(examples, site, tmp_path):
    from aotbench.objective import Denoiser, denoising_loss

    class Raw(torch.nn.Module):  # a raw network F(x, c_noise) that ignores the noise level
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, x, c_noise, class_labels=None, augment_labels=None):
            return self.lin(x)

    eps, net = examples["register_objectives"][1]["EpsPrediction"](), Raw()
    g = torch.Generator().manual_seed(0)
    y, noise, sigma = torch.randn(64, 3, generator=g), torch.randn(64, 3, generator=g), eps.sample_sigma(64, g)
    with torch.no_grad():
        c_in = 1 / (sigma[:, None] ** 2 + 0.25).sqrt()
        textbook = ((net(c_in * (y + sigma[:, None] * noise), None) - noise) ** 2).sum(1)  # ||F - n||^2
        loss = denoising_loss(Denoiser(net, eps), eps, y, noise, sigma)
    assert torch.allclose(loss, textbook, rtol=1e-4, atol=1e-6)
    out = run_cli("run", "--dataset", "moons", "--network", "mlp:width=16:depth=1", "--pairing", "none",
                  "--objective", "edm,eps", "--sampler", "euler", "--steps", "4", "--train-steps", "20",
                  "--batch", "32", "--pool", "64", "--n-samples", "40", "--metrics", "nfe,fd", "--results",
                  str(tmp_path), "--quiet", env=site)
    assert out.returncode == 0, out.stderr
    records = [json.loads(p.read_text()) for p in (tmp_path / "run" / "cells").glob("*.json")]
    keys = {r["config"]["train"]["objective"]["name"]: r["train_key"] for r in records}
    assert set(keys) == {"edm", "eps"} and keys["edm"] != keys["eps"]


LAUNCHER_SPEC = """experiment = "{name}"
[grid]
dataset = "moons"
network = "mlp:width=32:depth=1"
pairing = "aot"
sampler = "euler"
steps = [2, 4]
train_steps = 30
batch = 32
pool = 64
n_samples = 80
metrics = ["nfe", "fd"]
[options]
device = "cpu"
"""


def test_launcher_example_runs_a_sweep_to_the_records_of_the_built_in_launcher(site, tmp_path):
    records = {}
    for launcher in ("subprocesses", "debug"):
        spec = tmp_path / f"{launcher}.toml"
        spec.write_text(LAUNCHER_SPEC.format(name=launcher))
        out = run_cli("sweep", str(spec), "--launcher", launcher, "--results", str(tmp_path / "r"), env=site)
        assert out.returncode == 0, out.stderr
        cells = sorted((tmp_path / "r" / launcher / "cells").glob("*.json"))
        records[launcher] = {p.name: json.loads(p.read_text())["metrics"]["fd"] for p in cells}
    assert len(records["debug"]) == 2 and records["subprocesses"] == records["debug"]
    jobs = tmp_path / "r" / "subprocesses" / "jobs"
    outcomes = [json.loads(p.read_text())["state"] for p in jobs.glob("sp*_0_outcome.json")]
    assert outcomes == ["COMPLETED"] * 3  # the model's train job, then one eval job per cell
    status = run_cli("sweep", str(tmp_path / "subprocesses.toml"), "--launcher", "subprocesses", "--status",
                     "--results", str(tmp_path / "r"), env=site)
    assert status.returncode == 0 and "done     2" in status.stdout, status.stdout + status.stderr


def test_every_python_block_is_an_example(examples):
    text = DOC.read_text()
    assert text.count("```python") == len(python_blocks()) == len(examples)  # each implements one hook
    assert not re.search(r"\]\((?:\.\./|/)", text)  # no link out of the repository


# ------------------------------------------------------------------ the other docs: links, and the sweep spec's keys

DOCS = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_stay_in_the_repository_and_resolve(doc):
    text = doc.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        assert file.is_file() and REPO in file.parents, f"{doc.name}: link {target} leaves the repository or is broken"
        if anchor:
            headings = re.findall(r"^#+ (.*)$", file.read_text(), flags=re.M)
            assert anchor in {slug(h) for h in headings}, f"{doc.name}: no heading for #{anchor} in {file.name}"


def sweep_keys() -> tuple[set[str], set[str]]:
    """The keys [resources] and [options] accept, from the spec's own schema."""
    try:
        from dataclasses import fields

        from aotbench.sweep.spec import Options, Resources
        return {f.name for f in fields(Resources)}, {f.name for f in fields(Options)}
    except ImportError:  # the single-module sweep
        from aotbench.sweep import _COMMON, _OPTIONS, _STAGE_ONLY
        return set(_COMMON) | {k for t in _STAGE_ONLY.values() for k in t}, set(_OPTIONS)


def test_sweeps_doc_lists_every_key_and_axis_and_shows_the_real_example(tmp_path):
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    from aotbench.grid import AXES
    from aotbench.sweep import load_spec

    text = (REPO / "docs" / "sweeps.md").read_text()
    documented = set(re.findall(r"^\| `(\w+)`(?:, `(\w+)`)? \|", text, flags=re.M))
    documented = {k for pair in documented for k in pair if k}
    resources, options = sweep_keys()
    for key in sorted(AXES | resources | options | {"experiment", "results", "grid", "resources", "options"}):
        assert key in documented, f"docs/sweeps.md has no table row for `{key}`"
    (example,) = [b for b in re.findall(r"^```toml\n(.*?)^```", text, flags=re.S | re.M) if "[grid]" in b]
    assert tomllib.loads(example) == tomllib.loads((REPO / "sweeps" / "example.toml").read_text())
    (tmp_path / "example.toml").write_text(example)
    spec = load_spec(tmp_path / "example.toml")
    assert spec.eval.cells_per_job == 3 and spec.train.time_min == 60 and spec.eval.time_min == 30


def test_nothing_in_the_repository_points_outside_it():
    """Docs, code and specs name only files the repository ships (no design notes kept beside it)."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    if not tracked:  # not a git checkout (an sdist): read the usual folders instead
        tracked = [str(p.relative_to(REPO)) for d in ("aotbench", "plugins", "docs", "tests", "sweeps", "recipes",
                                                       "scripts") for p in (REPO / d).rglob("*") if p.is_file()]
    for name in tracked:
        if not name.endswith((".py", ".md", ".toml", ".sh", ".txt", ".cfg")) or name == "tests/test_docs.py":
            continue
        text = (REPO / name).read_text(errors="replace")
        assert "DESIGN.md" not in text and "../shared" not in text, f"{name} points outside the repository"
