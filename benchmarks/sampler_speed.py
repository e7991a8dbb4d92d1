"""Score-network forward speed for the diffusion baselines (Inpaint, Restoration): seconds per forward pass
(no gradient) at batch sizes 1..8, per batch and per sample, on the default 4 mm grid.

    .venv/bin/python benchmarks/sampler_speed.py                           # untrained default net, 40x48x40
    .venv/bin/python benchmarks/sampler_speed.py --model RUN_DIR/results/models/score/model.pt  # a finished run
    .venv/bin/python benchmarks/sampler_speed.py --batches 1 2 4 --threads 2 --repeats 5

The sampler evaluates the network once per predictor step and once per corrector step; every run of a
method is one batch element, so the per-sample column at the batch size a method uses is what a
volume costs per network evaluation. The default-config trade-off (inpaint.py / restoration.py
docstrings) was sized from this table; the figures it gave are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from spatial_msma.score.network import NetworkConfig, ScoreNet, load_score_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="a trained score model file (else an untrained default net)")
    parser.add_argument("--shape", type=int, nargs=3, default=[40, 48, 40])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per batch size (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        net = load_score_model(args.model).net
        shape = tuple(net.image_shape)
    else:
        shape = tuple(args.shape)
        torch.manual_seed(0)
        net = ScoreNet(2, shape, NetworkConfig()).eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, shape {shape}, "
          f"{sum(p.numel() for p in net.parameters()) / 1e6:.3g} M parameters", flush=True)
    print("batch | s_per_forward | s_per_sample", flush=True)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for batch in args.batches:
            x = torch.rand((batch, net.in_channels, *shape), generator=gen) * 2 - 1
            sigma = torch.full((batch,), 0.5)
            net(x, sigma)  # untimed: allocator, kernel choice
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                net(x, sigma)
                times.append(time.perf_counter() - t0)
            s = float(np.median(times))
            print(f"{batch} | {s:.3f} | {s / batch:.3f}", flush=True)


if __name__ == "__main__":
    main()
