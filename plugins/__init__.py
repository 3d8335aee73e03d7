"""aotbench's built-in strategies, installed as the ``aotbench_plugins`` package.

Each module is registered with the plugin manager exactly like a third-party plugin; none is imported by the core
except through this list. A new pairing, sampler or guidance method is one more file here and one more line below.
"""

BUILTINS = [
    "pairings.none",
    "pairings.aot",
    "pairings.pot_exact",
    "pairings.sinkhorn",
    "pairings.paper",
    "pairings.torchcfm_emd",
    "samplers.euler",
    "samplers.heun",
    "samplers.edm_stochastic",
    "samplers.dpmpp_2m",
    "samplers.rk45",
    "guidance.none",
    "guidance.cfg",
    "guidance.dg",
    "datasets.toy2d",
    "datasets.digits",
    "datasets.mnist5k",
    "datasets.cifar10",
    "datasets.edm_zip",
    "datasets.folder",
    "datasets.npz",
    "datasets.synthetic",
    "networks.mlp",
    "networks.unet",
    "networks.songunet",
    "metrics.nfe",
    "metrics.fd",
    "metrics.w2",
    "metrics.trajectory",
    "metrics.fid",
    "schedules.karras",
    "schedules.logsnr",
    "schedules.time_uniform",
    "launchers.local",
    "launchers.debug",
    "launchers.slurm",
]
