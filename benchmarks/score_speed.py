"""Score-network speed on this machine: training steps/s and score-norm volumes/s at the default and paper sizes.

    .venv/bin/python benchmarks/score_speed.py                      # both sizes (paper size on CPU is slow)
    .venv/bin/python benchmarks/score_speed.py --sizes default --threads 2
    .venv/bin/python benchmarks/score_speed.py --sizes paper --device cuda --steps 10

Each row times real DSM training steps (forward, backward, clipping, Adam, EMA) on random 2-channel
volumes after ``--warmup`` untimed steps, and the score norms of one volume at ``--levels`` noise levels
(one batched forward pass + the 3x3x3 patch norms). The presets mirror the proposed ``score.network``
of config/config.yaml (default) and config/paper.yaml (paper); ``--network`` overrides both with JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from spatial_msma.score.network import NetworkConfig, ScoreModel, ScoreNet
from spatial_msma.score.norms import score_norms
from spatial_msma.score.sde import VESDE, dsm_loss
from spatial_msma.training import make_ema, resolve_device

PRESETS = {
    # 4 mm (default crop of the built-in cohort), 2 channels; the package's default network
    # (DiffusionModelUNet (16, 32, 32), 2 residual blocks, mid-attention)
    "default": {"shape": (40, 48, 40), "batch": 2, "levels": 10, "network": {}},
    # 2 mm, batch 4 per GPU (paper); about 40 M parameters, NCSN++-like width, no attention (authors' code)
    "paper": {"shape": (96, 112, 80), "batch": 4, "levels": 20,
              "network": {"channels": [32, 64, 128, 256], "num_res_blocks": 2, "norm_num_groups": 16,
                          "mid_attention": False}},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(size: str, args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    preset = PRESETS[size]
    shape = tuple(args.shape) if args.shape else preset["shape"]
    batch = args.batch or preset["batch"]
    levels = args.levels or preset["levels"]
    net_cfg = NetworkConfig.from_dict(json.loads(args.network) if args.network else preset["network"])
    torch.manual_seed(0)
    net = ScoreNet(2, shape, net_cfg).to(device)
    ema = make_ema(net, 0.999)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    sde = VESDE(0.05, 200.0)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((batch, 2, *shape), generator=gen).to(device) * 2 - 1
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for k in range(args.warmup + args.steps):
        sigma = sde.sigma(sde.sample_t(batch, gen)).to(device)
        z = torch.randn(x.shape, generator=gen).to(device)
        sync(device)
        t0 = time.perf_counter()
        loss = dsm_loss(net, x, sigma, z, "mean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema.update_parameters(net)
        sync(device)
        if k >= args.warmup:
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    model = ScoreModel(net.eval(), sde, {})
    image = x[0].cpu().numpy()
    sigmas = sde.levels(levels, 0.01, 0.8)
    norm_times = []
    for k in range(1 + args.norm_repeats):
        sync(device)
        t0 = time.perf_counter()
        score_norms(model, image, sigmas, "sum", args.batch_levels)
        sync(device)
        if k:
            norm_times.append(time.perf_counter() - t0)
    norm_s = float(np.median(norm_times))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"size": size, "shape": "x".join(map(str, shape)), "batch": batch,
            "params_M": sum(p.numel() for p in net.parameters()) / 1e6, "step_s": step_s,
            "steps_per_s": 1.0 / step_s, "levels": levels, "norms_s_per_volume": norm_s,
            "volumes_per_s": 1.0 / norm_s, "peak_gpu_GiB": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=sorted(PRESETS), default=["default", "paper"])
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per size (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (allocator, kernel choice)")
    parser.add_argument("--norm-repeats", type=int, default=2, help="timed score-norm volumes (after 1 untimed)")
    parser.add_argument("--levels", type=int, default=0, help="noise levels for the norms (0: preset)")
    parser.add_argument("--batch", type=int, default=0, help="training batch (0: preset)")
    parser.add_argument("--batch-levels", type=int, default=0, help="levels per forward pass (0: all)")
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="override the volume shape")
    parser.add_argument("--network", default="", help="score.network as JSON, overriding the presets")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads", flush=True)
    header = ("size", "shape", "batch", "params_M", "step_s", "steps_per_s", "levels", "norms_s_per_volume",
              "volumes_per_s", "peak_gpu_GiB")
    print(" | ".join(header), flush=True)
    for size in args.sizes:
        row = bench(size, args, device)
        print(" | ".join(f"{row[h]:.3g}" if isinstance(row[h], float) else str(row[h]) for h in header), flush=True)


if __name__ == "__main__":
    main()
