"""Seconds per training step of a preset's two stages, as `videogpt.py train-vqvae / train-gpt` take them.

    python benchmarks/step_time.py --preset mnist-cpu --batch-size 8   # benchmarks/train_mnist_cpu.sh's steps

One process, nothing else should run: a warm-up of 2 steps, then the median of --steps, on random videos. The VQ-VAE step is the
training step (forward, backward, AdamW); the prior's step includes encoding the batch with the (untrained) VQ-VAE,
as `train_gpt` does when it is not given a codes file. Multiply by the step count for a run's training time.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import videogpt as vg  # noqa: E402


def median_time(step, n):
    step(), step()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--preset', default='mnist-cpu')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--steps', type=int, default=6)
    p.add_argument('--threads', type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vcfg, gcfg = vg.preset_configs(args.preset)
    batch = torch.rand(args.batch_size, vcfg.in_channels, vcfg.sequence_length, vcfg.resolution, vcfg.resolution) - 0.5
    vqvae = vg.VQVAE(vcfg)
    cond = torch.randn(args.batch_size, gcfg.cond_dim) if gcfg.cond_dim else None
    gpt = vg.VideoGPT(gcfg)
    for name, model, loss_fn in (('vqvae', vqvae, lambda: vqvae(batch)['loss']),
                                 ('gpt', gpt, lambda: gpt(vqvae.eval().encode(batch), None, cond)[1])):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            model.train()
            loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        print(f"{args.preset} {name}: {median_time(step, args.steps):.3f} s per step of {args.batch_size} videos "
              f"({args.threads} threads)")


if __name__ == '__main__':
    main()
