"""The paper-scale GPU check (issue: paper-scale recipe), one short script for a lent GPU node.

Measures, on whatever CUDA device is present:
1. DDPM++ (EDM's CIFAR-10 network, 55.7M parameters) training throughput in images/s at batch 256 in bf16, with
   independent pairing (``none``) against exact AOT with a pool of 512 paired in a background worker, through the
   real training engine (first steps excluded as warm-up);
2. Inception FID feature throughput (images/s), with on-device bicubic resizing and with clean-fid's PIL resizing;
3. the time to sample 10k images with Heun at 27 NFE (14 steps, rho = 90), the paper's unconditional setting.

CIFAR-10 cannot ship here, so the data are seeded uniform images of CIFAR's shape (speed does not depend on what the
images show). Usage: python scripts/gpu_check.py [--tiny] [--inception FILE] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def train_throughput(registry, pairing: str, args, device: str) -> dict:
    from aotbench.config import TrainConfig, resolve
    from aotbench.datasets import bind_data
    from aotbench.train import TrainOptions, train_model

    net = "ddpmpp" if not args.tiny else "ddpmpp:model_channels=16:channel_mult=1-2:num_blocks=1:attn_resolutions=8"
    cfg = bind_data(registry, TrainConfig(
        dataset=resolve(registry, "dataset", f"uniform-images:n={args.n_data}"),
        network=resolve(registry, "network", net), pairing=resolve(registry, "pairing", pairing),
        train_steps=args.train_steps, batch=args.batch, pool=args.pool, precision="bf16", seed=0))
    stamps = []

    def on_step(step, loss):
        sync()
        stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = train_model(registry, cfg, Path(tmp) / "m.pt",
                           TrainOptions(device=device, progress=False, ckpt_every=10**9, pair_workers=1,
                                        pair_threads=4, on_step=on_step))
    warm = args.warmup
    seconds = stamps[-1] - stamps[warm - 1]
    steps = len(stamps) - warm
    return {"pairing": pairing, "pool": cfg.pool, "batch": cfg.batch, "precision": cfg.precision,
            "img_per_s": steps * cfg.batch / seconds, "steps_timed": steps,
            "pair_seconds_total": ckpt["timing"]["pair_seconds"],
            "pair_wait_seconds_total": ckpt["timing"]["pair_wait_seconds"],
            "pair_seconds_per_pool": ckpt["timing"]["pair_seconds"] / max(1, -(-cfg.train_steps // cfg.steps_per_pool)),
            "final_loss": ckpt["history"][-1][1] if ckpt["history"] else None}


def inception_throughput(args, device: str) -> list[dict]:
    from aotbench.inception import Inception

    out = []
    x = torch.rand(args.n_inception, 3, 32, 32) * 2 - 1
    for resize in ("torch", "clean"):
        try:
            net = Inception(args.inception, device=device, batch=args.inception_batch, resize=resize)
            net(x[: args.inception_batch])  # warm-up
            sync()
            n = args.n_inception if resize == "torch" else min(args.n_inception, 2000)
            t0 = time.perf_counter()
            feats = net(x[:n])
            sync()
            dt = time.perf_counter() - t0
            out.append({"resize": resize, "images": n, "seconds": dt, "img_per_s": n / dt,
                        "feature_dim": int(feats.shape[1])})
        except Exception as err:  # noqa: BLE001 - report and continue: one part failing must not lose the others
            out.append({"resize": resize, "error": f"{type(err).__name__}: {err}"})
    return out


def sampling_time(registry, args, device: str) -> dict:
    from aotbench.config import CellConfig, TrainConfig, resolve
    from aotbench.evaluate import EvalContext
    from aotbench.datasets import bind_data, load_splits
    from aotbench.train import build_model

    net = "ddpmpp" if not args.tiny else "ddpmpp:model_channels=16:channel_mult=1-2:num_blocks=1:attn_resolutions=8"
    train = bind_data(registry, TrainConfig(
        dataset=resolve(registry, "dataset", f"uniform-images:n={args.n_data}"),
        network=resolve(registry, "network", net), pairing=resolve(registry, "pairing", "none"),
        batch=args.batch, pool=args.pool))
    splits = load_splits(registry, train.dataset)
    model = build_model(registry, train, splits).to(device).eval()
    cell = CellConfig(train=train, sampler=resolve(registry, "sampler", "heun"),
                      guidance=resolve(registry, "guidance", "none"), steps=14, rho=90.0, n_samples=args.n_sample)
    ctx = EvalContext(registry, cell, splits, model, device=device, batch=args.sample_batch)
    sync()
    t0 = time.perf_counter()
    x = ctx.samples
    sync()
    dt = time.perf_counter() - t0
    return {"images": int(x.shape[0]), "nfe": ctx.nfe, "steps": 14, "rho": 90.0, "batch": args.sample_batch,
            "seconds": dt, "img_per_s": x.shape[0] / dt, "precision": "fp32"}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", action="store_true", help="CPU smoke test of this script")
    p.add_argument("--inception", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--parts", default="train,inception,sample")
    a = p.parse_args()
    big = not a.tiny
    a.batch, a.pool = (256, 512) if big else (16, 32)
    a.train_steps, a.warmup = (80, 20) if big else (6, 2)
    a.n_data = 20000 if big else 256
    a.n_inception, a.inception_batch = (10000, 500) if big else (16, 8)
    a.n_sample, a.sample_batch = (10000, 2500) if big else (8, 8)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    from aotbench.plugins import get_registry

    registry = get_registry()
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "cpu_count": os.cpu_count()}
    print(json.dumps(result), flush=True)
    parts = a.parts.split(",")
    if "train" in parts:
        result["train"] = []
        for pairing in ("none", "aot"):
            t0 = time.perf_counter()
            result["train"].append(train_throughput(registry, pairing, a, device))
            print(json.dumps(result["train"][-1]), f"({time.perf_counter() - t0:.0f} s)", flush=True)
    if "inception" in parts:
        result["inception"] = inception_throughput(a, device)
        print(json.dumps(result["inception"]), flush=True)
    if "sample" in parts:
        result["sample"] = sampling_time(registry, a, device)
        print(json.dumps(result["sample"]), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
