"""How recognisable are a class-conditional Moving MNIST prior's samples? A number instead of a look.

    python benchmarks/digit_score.py --gpt runs/demo/gpt/ckpt.pt --mnist-dir DIR
    python benchmarks/digit_score.py --gpt ... --guidance 1 2 3 --temperature 0.8 1.0

A small CNN (global max pooling, so it does not care where the digit is) is trained on the frames of one-digit Moving
MNIST videos as the prior's VQ-VAE reconstructs them (samples are decoded by the same decoder, so they share its
blur; a classifier of sharp frames reads 0.95 of real frames but only 0.69 of reconstructed ones), then reads every
frame of sampled videos. Printed per setting, over n videos x T frames:
- frame accuracy: frames classified as the digit that was asked for;
- videos all right: videos whose every frame is the asked-for digit;
- videos steady: videos whose frames all get one class, whichever (the digit keeps its shape);
- px/frame: how far the digit's centre of brightness moves per frame (median over videos; 3.6 px in the data, less
  after bounces);
- blank: videos with a frame that has no ink at all (no pixel above a quarter of full brightness).
Real held-out videos and their VQ-VAE reconstructions are scored the same way: the reconstructions are the ceiling.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import data  # noqa: E402
import videogpt as vg  # noqa: E402


def classifier():
    return nn.Sequential(nn.Conv2d(1, 32, 5, 2, 2), nn.ReLU(), nn.Conv2d(32, 64, 5, 2, 2), nn.ReLU(),
                         nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                         nn.Linear(128, 10))


def videos(dataset, start, n):
    b = torch.utils.data.default_collate([dataset[i] for i in range(start, start + n)])
    return b['video'], b['label']


def train_classifier(dataset, steps, vqvae, batch=16):
    """Trained on every frame of `batch` fresh reconstructed videos per step (batch * T frames)."""
    net = classifier()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for step in range(steps):
        v, y = videos(dataset, step * batch, batch)
        with torch.no_grad():
            v = vqvae(v)['x_hat'].clamp(-0.5, 0.5)
        T = v.shape[2]
        loss = F.cross_entropy(net(v.transpose(1, 2).flatten(0, 1)), y.repeat_interleave(T))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def score(net, video, labels):
    """video (n, 1, T, H, W), labels (n,) -> (frame accuracy, videos all right, videos steady, px/frame, blank)."""
    n, T = video.shape[0], video.shape[2]
    pred = net(video.transpose(1, 2).flatten(0, 1)).argmax(-1).view(n, T)  # (n, T)
    right = pred == labels[:, None]
    steady = (pred == pred[:, :1]).all(1)
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
    p.add_argument('--classifier-steps', type=int, default=600)
    p.add_argument('--classifier', default='', help='cache the classifier here (it depends only on the VQ-VAE)')
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    gpt = vg.load_model(args.gpt)
    vqvae = vg.load_model(vg.load_checkpoint(args.gpt)['vqvae'])
    T = vqvae.config.sequence_length
    tc = vg.TrainConfig(mnist_dir=args.mnist_dir, n_digits=1, seed=args.seed + 100)  # videos the models never saw
    train_set = data.make_dataset(tc, T, 64)
    if args.classifier and os.path.exists(args.classifier):
        net = classifier()
        net.load_state_dict(torch.load(args.classifier, weights_only=True))
        net.eval()
    else:
        t0 = time.time()
        net = train_classifier(train_set, args.classifier_steps, vqvae)
        print(f"classifier trained in {time.time() - t0:.0f} s on {args.classifier_steps * 16} reconstructed videos")
        if args.classifier:
            torch.save(net.state_dict(), args.classifier)
    real, labels = videos(data.make_dataset(tc, T, 64, train=False), 0, args.n)
    with torch.no_grad():
        recon = torch.cat([vqvae(x)['x_hat'].clamp(-0.5, 0.5) for x in real.split(25)])
    print(f"{'videos':<42} {'frame acc':>9} {'all right':>9} {'steady':>7} {'px/frame':>8} {'blank':>6}")
    row = '{:<42} {:>9.2f} {:>9.2f} {:>7.2f} {:>8.1f} {:>6.2f}'
    for name, v in (('real held-out', real), ('VQ-VAE reconstructions', recon)):
        print(row.format(name, *score(net, v, labels)))
    asked = torch.arange(args.n) % 10
    for g in args.guidance:
        for temp in args.temperature:
            codes = gpt.sample(args.n, cond=asked, temperature=temp, guidance=g,
                               generator=torch.Generator().manual_seed(args.seed))
            with torch.no_grad():
                v = vqvae.decode(codes).clamp(-0.5, 0.5)
            print(row.format(f'samples, temperature {temp}, guidance {g}', *score(net, v, asked)))


if __name__ == '__main__':
    main()
