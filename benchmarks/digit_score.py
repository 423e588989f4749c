"""How often does a class-conditional Moving MNIST prior (one digit per video, the demo's) draw the digit asked for?

    python benchmarks/digit_score.py --gpt runs/demo/gpt/ckpt.pt --mnist-dir DIR
    python benchmarks/digit_score.py --gpt ... --guidance 1 2 3 --temperature 0.8 1.0

Every frame of sampled videos is read by the project's digit reader (data.load_digit_reader, the one `eval` and
mnist_scores.py use; trained on sharp and blurred frames of training digits, and on stroke fragments that form no
digit). A frame reads as digit d when the reader finds d (p > 0.5) and no second digit. Printed per setting, over
n videos x T frames:
- frame accuracy: frames read as the digit that was asked for;
- videos all right: videos whose every frame reads as the asked-for digit;
- videos steady: videos whose frames all read as one digit, whichever (the digit keeps its shape);
- px/frame: how far the digit's centre of brightness moves per frame (median over videos; 3.6 px in the data, less
  after bounces);
- blank: videos with a frame that has no ink at all (no pixel above a quarter of full brightness).
Held-out real videos and their VQ-VAE reconstructions are scored the same way: the reconstructions are the ceiling.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import data  # noqa: E402
import videogpt as vg  # noqa: E402


def read_one_digit(reader, video):
    """(n, T) the digit each frame of video (n, 1, T, 64, 64) shows, -1 where the reader finds none or two."""
    top = data.read_digits(reader, video).topk(2, dim=-1)  # (n, T, 2)
    one = (top.values[..., 0] > 0.5) & (top.values[..., 1] <= 0.5)
    return torch.where(one, top.indices[..., 0], -1)


def score(reader, video, labels):
    """video (n, 1, T, H, W), labels (n,) -> (frame accuracy, videos all right, videos steady, px/frame, blank)."""
    read = read_one_digit(reader, video)                                      # (n, T)
    right = read == labels[:, None]
    steady = ((read == read[:, :1]) & (read >= 0)).all(1)
    ink = (video[:, 0] + 0.5).clamp(min=0)                                     # (n, T, H, W) brightness in [0, 1]
    blank = ((ink > 0.25).flatten(2).sum(-1) == 0).any(1)                      # (n,)
    mass = ink.sum((2, 3)) + 1e-6                                             # (n, T)
    ys = (ink.sum(3) * torch.arange(ink.shape[2])).sum(-1) / mass
    xs = (ink.sum(2) * torch.arange(ink.shape[3])).sum(-1) / mass
    centre = torch.stack([ys, xs], -1)                                        # (n, T, 2)
    speed = centre.diff(dim=1).norm(dim=-1).mean(1)[~blank]                   # (videos with ink throughout,)
    return (right.float().mean().item(), right.all(1).float().mean().item(), steady.float().mean().item(),
            speed.median().item() if len(speed) else float('nan'), blank.float().mean().item())


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--gpt', required=True, help="a class-conditional prior's ckpt.pt (cond_dim=10)")
    p.add_argument('--mnist-dir', default='')
    p.add_argument('--n', type=int, default=100, help='sampled videos per setting (labels 0-9 in turn)')
    p.add_argument('--temperature', type=float, nargs='+', default=[0.8])
    p.add_argument('--guidance', type=float, nargs='+', default=[1.0])
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args()
    gpt = vg.load_model(args.gpt, 'gpt')
    vqvae = vg.load_model(vg.find_vqvae(args.gpt), 'vqvae')
    if gpt.config.cond_dim != 10 or vqvae.config.in_channels != 1 or vqvae.config.resolution != 64:
        sys.exit(f"{args.gpt}: give a class-conditional Moving MNIST prior (cond_dim=10, 64x64 grey), as the demo's")
    reader, T = data.load_digit_reader(), vqvae.config.sequence_length
    held = data.make_dataset(vg.TrainConfig(mnist_dir=args.mnist_dir, n_digits=1), T, 64, train=False)
    batch = torch.utils.data.default_collate([held[i] for i in range(args.n)])  # digits training never saw
    real, labels = batch['video'], batch['label']
    with torch.no_grad():
        recon = torch.cat([vqvae(x)['x_hat'].clamp(-0.5, 0.5) for x in real.split(25)])
    print(f"{'videos':<42} {'frame acc':>9} {'all right':>9} {'steady':>7} {'px/frame':>8} {'blank':>6}")
    row = '{:<42} {:>9.2f} {:>9.2f} {:>7.2f} {:>8.1f} {:>6.2f}'
    for name, v in (('real held-out', real), ('VQ-VAE reconstructions', recon)):
        print(row.format(name, *score(reader, v, labels)))
    asked = torch.arange(args.n) % 10
    for g in args.guidance:
        for temp in args.temperature:
            codes = gpt.sample(args.n, cond=asked, temperature=temp, guidance=g,
                               generator=torch.Generator().manual_seed(args.seed))
            with torch.no_grad():
                v = vqvae.decode(codes).clamp(-0.5, 0.5)
            print(row.format(f'samples, temperature {temp}, guidance {g}', *score(reader, v, asked)))


if __name__ == '__main__':
    main()
