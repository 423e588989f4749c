"""Masked parallel decoding (MaskGIT / MAGVIT, 12 steps) against autoregressive decoding with a KV cache.

    python benchmarks/masked_vs_ar.py speed                     # the bench.py prior (width 192, 4 layers, 4 heads)
    python benchmarks/masked_vs_ar.py quality --vqvae V --ar A --masked M --mnist-dir DIR

speed: untrained priors (the weights do not change the work), batch 4 by default, at 256, 1,024 and 2,048 tokens:
wall time per batch (median of --reps), forward passes, generated tokens per second, and masked / AR speed-up.
quality: two priors over the same VQ-VAE's codes, e.g. the demo's AR prior and a masked prior trained with the same
settings and --tasks. On held-out one-digit Moving MNIST clips, each predicts the second half of the latent frames
from the first (the 'fp' task: AR continues the raster-order prefix, masked fills the rest in 12 steps), sampled at
--temperature and greedy, scored by PSNR and SSIM of the predicted pixel frames against the real ones and by the
share of predicted frames in which the digit reader names the clip's digit; AR also reports held-out bits per token.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import data  # noqa: E402
import videogpt as vg  # noqa: E402


def timed(fn, reps):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def speed(args):
    rows = []
    for shape in ((4, 8, 8), (4, 16, 16), (8, 16, 16))[:args.sizes]:
        L, n = math.prod(shape), args.batch
        torch.manual_seed(0)
        common = dict(n_codes=512, latent_shape=shape, n_layer=4, n_head=4, n_embd=192, dropout=0.0)
        ar, masked = (vg.VideoGPT(vg.GPTConfig(causal=c, **common)).eval() for c in (True, False))
        gen = torch.Generator().manual_seed(0)
        t_ar = timed(lambda: ar.sample(n, generator=gen), args.reps)
        t_m = timed(lambda: masked.sample(n, generator=gen, steps=args.steps), args.reps)
        rows.append(dict(tokens=L, batch=n, ar_s=t_ar, ar_passes=L, ar_tok_s=n * L / t_ar, masked_s=t_m,
                         masked_passes=args.steps, masked_tok_s=n * L / t_m, speedup=t_ar / t_m))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n| tokens | batch | AR (KV cache) | masked, {args.steps} steps | masked / AR speed |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tokens']:,} | {r['batch']} | {r['ar_s']:.2f} s, {r['ar_passes']:,} passes, "
              f"{r['ar_tok_s']:,.0f} tok/s | {r['masked_s']:.2f} s, {r['masked_passes']} passes, "
              f"{r['masked_tok_s']:,.0f} tok/s | {r['speedup']:.2f}x |")


@torch.no_grad()
def quality(args):
    vqvae, ar, masked = (vg.load_model(p) for p in (args.vqvae, args.ar, args.masked))
    for prior in (ar, masked):
        if prior.config.latent_shape != vqvae.config.latent_shape or prior.config.n_codes != vqvae.config.n_codes:
            raise SystemExit("both priors must model this VQ-VAE's codes")
    vcfg, t = vqvae.config, vqvae.config.latent_shape[0]
    digits, labels, source = data.mnist_digits(args.mnist_dir or None, train=False)  # digits held out from training
    held_out = data.MovingMNIST(digits, n_frames=vcfg.sequence_length, n_digits=1, seed=1, labels=labels)
    batch = torch.utils.data.default_collate([held_out[i] for i in range(args.n)])
    video, label = batch['video'], batch['label']
    n_given = t // 2
    T_given = n_given * vcfg.downsample[0]  # pixel frames covered by the given latent frames
    future = slice(T_given, vcfg.sequence_length)
    cond = lambda prior, c: c if prior.config.cond_dim else None
    rows = {}
    recon = vqvae(video)['x_hat'].clamp(-0.5, 0.5)
    copy_last = video[:, :, T_given - 1:T_given].expand_as(video[:, :, future])
    rows['VQ-VAE reconstruction (ceiling)'] = recon[:, :, future]
    rows['repeat the last given frame'] = copy_last
    for name, prior in (('AR, KV cache', ar), ('masked, 12 steps', masked)):
        greedy = dict(top_k=1) if prior.config.causal else dict(temperature=0.0)
        for how, knobs in ((f'temperature {args.temperature:g}', dict(temperature=args.temperature)),
                           ('greedy', greedy)):
            outs, t0 = [], time.perf_counter()
            for i, (v, c) in enumerate(zip(video.split(args.batch), label.split(args.batch))):
                gen = torch.Generator().manual_seed(i)
                outs.append(vg.complete_video(vqvae, prior, v, 'fp', n_given, cond=cond(prior, c), generator=gen,
                                              **knobs)[0])
            rows[f'{name}, {how} ({time.perf_counter() - t0:.1f} s)'] = torch.cat(outs)[:, :, future]
    # One digit per clip: the reader scores pairs, so its class goes in as both of the pair's digits
    truth, reader, digit = video[:, :, future], data.load_digit_reader(), label[:, None].expand(-1, 2)
    print(f"{args.n} held-out clips ({source}); given {T_given} of {vcfg.sequence_length} frames "
          f"({n_given} of {t} latent frames), predicted {vcfg.sequence_length - T_given}")
    print("\n| predicted frames | PSNR (dB) | SSIM | digit named |\n|---|---|---|---|")
    print(f"| real frames (the reader's ceiling) | | | {data.digit_reading(reader, truth, digit)['kept']:.3f} |")
    for name, pred in rows.items():
        print(f"| {name} | {vg.psnr(pred, truth).mean():.2f} | {vg.ssim(pred, truth).mean():.3f} | "
              f"{data.digit_reading(reader, pred, digit)['kept']:.3f} |")
    codes = vqvae.encode(video)
    bits = ar(codes, cond=cond(ar, label))[1].item() / math.log(2)
    print(f"\nAR prior: {bits:.3f} held-out bits per token (uniform: {math.log2(vcfg.n_codes):.2f})")
    if args.picture:  # one held-out clip, then the masked prior's completion for each task, given regions outlined
        rows, marks = [video[args.clip]], [torch.zeros(video.shape[2:], dtype=torch.bool)]
        for task in vg.TASKS:
            out, given = vg.complete_video(vqvae, masked, video[args.clip:args.clip + 1], task, n_given,
                                           cond=cond(masked, label[args.clip:args.clip + 1]),
                                           generator=torch.Generator().manual_seed(0), temperature=args.temperature)
            rows.append(out[0])
            marks.append(given)
        data.save_video_grid(torch.stack(rows), args.picture, mark=torch.stack(marks))
        print(f"wrote {args.picture}: the real clip, then {', '.join(vg.TASKS)}, one row each")


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = p.add_subparsers(dest='cmd', required=True)
    s = sub.add_parser('speed')
    s.add_argument('--batch', type=int, default=4)
    s.add_argument('--reps', type=int, default=3)
    s.add_argument('--steps', type=int, default=12)
    s.add_argument('--sizes', type=int, default=3, help="how many of 256, 1,024, 2,048 tokens")
    s.add_argument('--threads', type=int, default=2)
    q = sub.add_parser('quality')
    for flag in ('--vqvae', '--ar', '--masked'):
        q.add_argument(flag, required=True)
    q.add_argument('--mnist-dir', default='')
    q.add_argument('--n', type=int, default=64)
    q.add_argument('--batch', type=int, default=16)
    q.add_argument('--temperature', type=float, default=1.0)
    q.add_argument('--threads', type=int, default=2)
    q.add_argument('--picture', help="also write a .png of every task's completion of one clip")
    q.add_argument('--clip', type=int, default=0, help="which held-out clip the picture shows")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    speed(args) if args.cmd == 'speed' else quality(args)


if __name__ == '__main__':
    main()
