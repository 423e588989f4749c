"""Seconds per training step of a preset's two stages, as `videogpt.py train-vqvae / train-gpt` take them.

    python benchmarks/step_time.py --preset mnist-cpu --batch-size 8   # benchmarks/train_mnist_cpu.sh's steps

One process, nothing else should run: a warm-up of 2 steps, then the median of --steps, on random videos. The VQ-VAE
step is the training step (forward, backward, AdamW); the prior's step includes encoding the batch with the
(untrained) VQ-VAE, as `train_gpt` does when it is not given a codes file. Multiply by the step count for a run's
training time.
"""
import argparse

import torch

from bench import time_steps, train_step_fn, vg  # bench.py: the timing loop and train step of the fixed workloads


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--preset', default='mnist-cpu')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--steps', type=int, default=6)
    p.add_argument('--threads', type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cpu, (vcfg, gcfg) = torch.device('cpu'), vg.preset_configs(args.preset)
    batch = torch.rand(args.batch_size, vcfg.in_channels, vcfg.sequence_length, vcfg.resolution, vcfg.resolution) - 0.5
    cond = torch.randn(args.batch_size, gcfg.cond_dim) if gcfg.cond_dim else None
    vqvae, gpt = vg.VQVAE(vcfg), vg.VideoGPT(gcfg)
    for name, model, loss_fn in (('vqvae', vqvae, lambda m: m(batch)['loss']),
                                 ('gpt', gpt, lambda m: m(vqvae.eval().encode(batch), None, cond)[1])):
        step_s = time_steps(train_step_fn(model, loss_fn, cpu, None), cpu, args.steps)
        print(f"{args.preset} {name}: {step_s:.3f} s per step of {args.batch_size} videos ({args.threads} threads)")


if __name__ == '__main__':
    main()
