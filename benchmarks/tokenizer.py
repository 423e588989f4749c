"""MAGVIT's tokenizer claims at this project's scale: reflect padding, the GAN loss with LeCam, 3D inflation.

    python benchmarks/tokenizer.py --mnist-dir DIR [--steps 400] [--out runs/tokenizer]
    python benchmarks/tokenizer.py --claim gan|inflation --mnist-dir DIR [--steps 400]

Two VQ-VAEs of the mnist-cpu preset's shape (two-digit clips of 8 frames -> 4x8x8 codes, 8 px per latent cell), one
with zero padding and one with reflect padding, trained alike: same steps, batch, learning rate and seed, so the same
CPU time up to the padding's own cost (both printed). Then token consistency: a still held-out digit is drawn at a
place, and again shifted right by k = 1, 2 or 3 whole latent cells (8k px); of the codes over the digit, the share
that moved with it (equal to the code k cells to the right in the shifted clip). Places run over the whole frame, the
edges included, where zero padding tells a cell where it is. Also each VQ-VAE's held-out PSNR, for its cost.

--claim gan: the same VQ-VAE trained alike with MSE only, MSE + GAN (weight 0.1 after a third of the steps), and
MSE + GAN + LeCam (0.001, MAGVIT's); each one's held-out reconstructions scored by PSNR, SSIM, the digit reader
(legible, kept) and a Frechet distance between the reader's 128-d features of reconstructed and real frames.

--claim inflation: the 3D VQ-VAE from fresh weights, or from a 2D one (sequence_length=1) trained on single frames and
inflated by vg.inflate_from_2d ('central' or 'average'), then trained alike; the inflated arms' time counts the 2D run.
"""
import argparse
import os
import sys
import time
from dataclasses import replace

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import data  # noqa: E402
import videogpt as vg  # noqa: E402


def still_digits(digit, places, shift):
    """(N, 1, 8, 64, 64) still clips of one 28x28 uint8 digit at places (N, 2) as (y, x), moved right by shift px."""
    video = torch.zeros(len(places), 1, 8, 64, 64)
    for i, (y, x) in enumerate(places):
        video[i, 0, :, y:y + 28, x + shift:x + shift + 28] = torch.from_numpy(digit[i]).float() / 255
    return video - 0.5


def consistency(vqvae, digits, rng, n=256):
    """{k: share of the digit's codes that move with it by k latent cells}, over n held-out digits and places."""
    out = {}
    for k in (1, 2, 3):
        pick = rng.integers(0, len(digits), n)
        places = np.stack([rng.integers(0, 64 - 28 + 1, n), rng.integers(0, 64 - 28 - 8 * k + 1, n)], 1)
        with torch.no_grad():
            a = vqvae.encode(still_digits(digits[pick], places, 0))       # (N, 4, 8, 8)
            b = vqvae.encode(still_digits(digits[pick], places, 8 * k))
        same, total = 0, 0
        for i, (y, x) in enumerate(places):  # the cells the digit covers, and the same cells k to the right
            rows, cols = slice(y // 8, (y + 27) // 8 + 1), slice(x // 8, (x + 27) // 8 + 1)
            moved = b[i, :, rows, cols.start + k:cols.stop + k]
            same += (a[i, :, rows, cols] == moved).sum().item()
            total += moved.numel()
        out[k] = same / total
    return out


def reconstruct(vqvae, heldout):
    """(reconstructions of heldout (N, 1, T, 64, 64) in [-0.5, 0.5], 'PSNR .. dB  SSIM ..' over them)."""
    with torch.no_grad():
        rec = vqvae.eval()(heldout)['x_hat'].clamp(-0.5, 0.5)
    return rec, f'PSNR {vg.psnr(rec, heldout).mean():.2f} dB  SSIM {vg.ssim(rec, heldout).mean():.3f}'


def gan_claim(vcfg, tcfg_for, heldout, classes):
    """Train the three arms and print each one's reconstruction scores on heldout (N, 1, T, 64, 64)."""
    reader = data.load_digit_reader()
    features = lambda v: reader.net[:-1](v.transpose(1, 2).flatten(0, 1)).detach()  # noqa: E731  (N*T, 128)
    real = features(heldout)
    warmup = max(1, tcfg_for('x').steps // 3)
    for name, extra in (('MSE only', {}), ('MSE + GAN', dict(gan_weight=0.1, gan_warmup=warmup)),
                        ('MSE + GAN + LeCam', dict(gan_weight=0.1, gan_warmup=warmup, lecam_weight=0.001))):
        t0 = time.time()
        vqvae = vg.train_vqvae(replace(vcfg, **extra), tcfg_for(name.replace(' ', '').replace('+', '_')))
        seconds = time.time() - t0
        rec, scores = reconstruct(vqvae, heldout)
        reading = data.digit_reading(reader, rec, classes)
        print(f"{name:<18} {seconds:5.0f} s  {scores}  legible {reading['legible']:.3f}  kept {reading['kept']:.3f}  "
              f"Frechet (reader features) {data.frechet_distance(features(rec), real):.2f}", flush=True)


def inflation_claim(vcfg, tcfg_for, heldout, steps):
    """A 2D VQ-VAE trained on single frames (8 clips' frames per step), inflated centrally or by averaging, against
    fresh weights: held-out PSNR/SSIM after 0 (inflated only), steps/4, steps/2 and steps 3D steps, each its own run."""
    t0 = time.time()
    image_cfg = replace(vcfg, sequence_length=1, downsample=(1,) + vcfg.downsample[1:])
    image_vq = vg.train_vqvae(image_cfg, replace(tcfg_for('2d'), batch_size=64))
    image_seconds = time.time() - t0
    print(f'2D VQ-VAE on single frames: {steps} steps of 64 frames in {image_seconds:.0f} s', flush=True)
    for arm in ('scratch', 'central', 'average'):
        for budget in (steps // 4, steps // 2, steps) if arm == 'scratch' else (0, steps // 4, steps // 2, steps):
            init = None if arm == 'scratch' else vg.inflate_from_2d(vg.VQVAE(vcfg), image_vq.state_dict(), arm)
            t0 = time.time()
            if budget:
                tcfg = replace(tcfg_for(f'{arm}{budget}'), steps=budget, warmup=max(1, budget // 10),
                               log_every=max(1, budget // 10), ckpt_every=budget, sample_every=budget)
                init = vg.train_vqvae(vcfg, tcfg, init=init)
            seconds = time.time() - t0 + image_seconds * (arm != 'scratch')
            scores = reconstruct(init, heldout)[1]
            print(f'{arm:<8} {budget:5d} 3D steps  {seconds:5.0f} s in all  {scores}', flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--mnist-dir', required=True)
    p.add_argument('--steps', type=int, default=400)
    p.add_argument('--out', default='runs/tokenizer')
    p.add_argument('--claim', default='padding', choices=('padding', 'gan', 'inflation'))
    args = p.parse_args()
    vcfg, _ = vg.preset_configs('mnist-cpu')
    held, held_labels, source = data.mnist_digits(args.mnist_dir, train=False, download=False)
    clips = data.MovingMNIST(held, n_frames=8, seed=1, labels=held_labels)
    heldout = torch.stack([clips[i]['video'] for i in range(64)])
    print(f'held out: {source}')
    tcfg_for = lambda name: vg.TrainConfig(  # noqa: E731  every arm alike but for its folder
        out_dir=os.path.join(args.out, name), steps=args.steps, batch_size=8, lr=1e-3, warmup=max(1, args.steps // 10),
        mnist_dir=args.mnist_dir, num_workers=1, log_every=max(1, args.steps // 10), ckpt_every=args.steps,
        sample_every=args.steps, resume=True)
    if args.claim == 'gan':
        return gan_claim(vcfg, tcfg_for, heldout, data.two_digit_classes(clips, 64))
    if args.claim == 'inflation':
        return inflation_claim(vcfg, tcfg_for, heldout, args.steps)
    for padding in ('zeros', 'reflect'):
        t0 = time.time()
        vqvae = vg.train_vqvae(replace(vcfg, padding=padding), tcfg_for(padding)).eval()  # encode: EMA off
        seconds = time.time() - t0
        scores = reconstruct(vqvae, heldout)[1]
        shares = consistency(vqvae, held, np.random.default_rng(0))
        print(f'{padding:<8} {args.steps} steps in {seconds:.0f} s, held-out {scores}; codes that move '
              'with the digit: ' + ', '.join(f'{k} cell{"s" * (k > 1)} {s:.3f}' for k, s in shares.items()),
              flush=True)


if __name__ == '__main__':
    main()
