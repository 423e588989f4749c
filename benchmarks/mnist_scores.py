"""What a viewer sees in a two-digit Moving MNIST model, read by the digit reader (data.DigitReader) on held-out digits.

    python benchmarks/mnist_scores.py --vqvae V.pt --gpt G.pt --mnist-dir DIR --n 64
    python benchmarks/mnist_scores.py --vqvae V.pt --mnist-dir DIR            # the VQ-VAE alone

Printed, each beside its ceiling or trivial baseline:
- legible: frames in which the reader finds two digits (its second most likely digit has p > 0.5);
- kept: frames whose two most likely digits are the two digits the video shows (for predictions: the context's);
  on real frames and the VQ-VAE's reconstructions (the ceilings), and on the --context -> --future prediction,
  sampled at temperature 1 and greedy (top_k=1), against black frames and repeating the last context frame;
- MSE per frame (squared error summed over a frame's pixels in [0, 1], the Moving MNIST leaderboard's) and SSIM of
  the same predictions and baselines, and the best of --best-of samples per clip by MSE;
- legible among --samples unconditional samples.
A class-conditional prior (cond_dim 10, trained with the null condition) is scored both ways: without a condition
(the rows above) and told the context's two digits, or asked for two digits (samples: kept = the asked-for digits).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import data  # noqa: E402
import videogpt as vg  # noqa: E402


def held_out_videos(mnist_dir, n, n_frames):
    """(videos (n, 1, n_frames, 64, 64), digit classes (n, 2)) of held-out digits, as `eval` draws them."""
    ds = data.make_dataset(vg.TrainConfig(mnist_dir=mnist_dir, n_digits=2), n_frames, 64, train=False)
    return torch.stack([ds[i]['video'] for i in range(n)]), data.two_digit_classes(ds, n)


def reading(reader, video, classes):
    """(legible, kept) shares of the frames of video (B, 1, T, 64, 64) showing classes (B, 2)."""
    return tuple(data.digit_reading(reader, video, classes).values())


def reconstruct(vqvae, video, batch_size):
    """The VQ-VAE's reconstruction of as many whole windows of video as fit, (B, 1, T', 64, 64)."""
    T = vqvae.config.sequence_length
    windows = [video[:, :, s:s + T] for s in range(0, video.shape[2] - T + 1, T)]
    return torch.cat([torch.cat([vqvae(x)['x_hat'].clamp(-0.5, 0.5) for x in w.split(batch_size)])
                      for w in windows], dim=2)


def sample_rows(vqvae, gpt, reader, classes, args, g):
    """{'samples': (legible, nan)} of args.samples samples without a condition, and for a two-digit class-conditional
    prior {'samples asked for 2 digits': (legible, kept)}, asked for the pairs of classes (n, 2) in turn."""
    asked, rows = classes.repeat(args.samples // len(classes) + 1, 1)[:args.samples], {}  # (samples, 2), cycled
    arms = {'samples': None}
    if gpt.config.cond_dim == 10:  # two-digit class-conditional: also asked for the held-out clips' pairs
        arms['samples asked for 2 digits'] = asked
    for name, cond in arms.items():
        codes = gpt.sample(args.samples, cond=cond, generator=g, guidance=1.0 if cond is None else args.guidance)
        sampled = torch.cat([vqvae.decode(c).clamp(-0.5, 0.5) for c in codes.split(args.batch_size)])
        legible, kept = reading(reader, sampled, asked)
        rows[name] = (legible, float('nan') if cond is None else kept)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--vqvae', required=True)
    p.add_argument('--gpt', default='')
    p.add_argument('--mnist-dir', required=True, help="the folder of MNIST's IDX files")
    p.add_argument('--n', type=int, default=64, help="held-out videos")
    p.add_argument('--context', type=int, default=10)
    p.add_argument('--future', type=int, default=10)
    p.add_argument('--best-of', type=int, default=8, help="samples per clip for the best-of MSE (1: skip)")
    p.add_argument('--samples', type=int, default=32, help="samples scored, untold and asked for pairs (0: skip)")
    p.add_argument('--guidance', type=float, default=1.0, help="classifier-free guidance where a condition is given")
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', default='', help="also write the scores here")
    args = p.parse_args()
    t0, reader, vqvae = time.time(), data.load_digit_reader(), vg.load_model(args.vqvae, 'vqvae')
    videos, classes = held_out_videos(args.mnist_dir, args.n, args.context + args.future)
    rows = {'real frames': reading(reader, videos, classes),
            'reconstructions': reading(reader, reconstruct(vqvae, videos, args.batch_size), classes)}
    scores = {}
    if args.gpt:
        gpt = vg.load_model(args.gpt, 'gpt')
        context, future = videos[:, :, :args.context], videos[:, :, args.context:]
        g = torch.Generator().manual_seed(args.seed)

        def predict(told=False, **kw):  # told the context's digits, else without a condition (the null one)
            return torch.cat([vg.predict_frames(vqvae, gpt, c, args.future, y if told else None, g, **kw)
                              for c, y in zip(context.split(args.batch_size), classes.split(args.batch_size))])
        knobs = dict(top_k=1) if gpt.config.causal else dict(temperature=0.0)
        preds = {'prediction, temperature 1': predict(), 'prediction, greedy': predict(**knobs)}
        if gpt.config.cond_dim == 10:  # two-digit class-conditional: also told the context's digits
            preds.update({'told the digits, temp. 1': predict(True, guidance=args.guidance),
                          'told the digits, greedy': predict(True, guidance=args.guidance, **knobs)})
        preds.update({'black frames': torch.full_like(future, -0.5),
                      'last context frame': context[:, :, -1:].expand_as(future)})
        rows['real future frames'] = reading(reader, future, classes)
        for name, pred in preds.items():
            rows[name] = reading(reader, pred, classes)
            scores[name] = {k: v.mean().item() for k, v in vg.prediction_scores(pred, future).items()}
        if args.best_of > 1:
            mse = torch.stack([vg.prediction_scores(predict(), future)['mse'] for _ in range(args.best_of - 1)] +
                              [vg.prediction_scores(preds['prediction, temperature 1'], future)['mse']])
            scores[f'best of {args.best_of}, temperature 1'] = dict(mse=mse.min(0).values.mean().item())
        if args.samples and gpt.config.causal and not gpt.config.n_cond_frames:
            rows.update(sample_rows(vqvae, gpt, reader, classes, args, g))
    print(f"{'':<28} {'legible':>8} {'kept':>8} {'MSE/frame':>10} {'SSIM':>7}")
    for name, (legible, kept) in rows.items():
        s = scores.get(name, {})
        print(f"{name:<28} {legible:>8.3f} {kept:>8.3f} {s.get('mse', float('nan')):>10.1f} "
              f"{s.get('ssim', float('nan')):>7.3f}")
    for name, s in scores.items():
        if name not in rows:
            print(f"{name:<28} {'':>8} {'':>8} {s['mse']:>10.1f}")
    out = dict(args=dict(vars(args), mnist_dir='DIR'),  # the folder is the machine's own, not part of the result
               reading={k: dict(legible=a, kept=b) for k, (a, b) in rows.items()}, scores=scores,
               seconds=round(time.time() - t0, 1))
    print(f"{out['seconds']} s")
    if args.json:
        data.write_json(args.json, out)
    return out


if __name__ == '__main__':
    with torch.no_grad():
        main()
