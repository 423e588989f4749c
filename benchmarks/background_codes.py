"""How many codes a VQ-VAE spends on blank background: python benchmarks/background_codes.py CKPT

On 32 held-out 8-frame Moving MNIST videos (the mnist-cpu preset's size): reconstruction PSNR and SSIM, then over the
4 x 4 patches that are entirely black, the number of distinct codes, their perplexity and the share of the most common
one, and the share of codes equal to the code at the same place one latent frame earlier.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch  # noqa: E402
from einops import rearrange  # noqa: E402

import data  # noqa: E402
import videogpt as v  # noqa: E402

vq = v.load_model(sys.argv[1], 'vqvae')
ds = data.make_dataset(v.TrainConfig(mnist_dir=os.environ.get('MNIST_DIR', '../shared/data/mnist')), 8, 64, train=False)
x = torch.stack([ds[i]['video'] for i in range(32)])
with torch.no_grad():
    codes = vq.encode(x)
    rec = vq.decode(codes).clamp(-0.5, 0.5)
_, h, w = vq.config.latent_shape  # each code covers one (T/t) x (H/h) x (W/w) patch; here 1 x 4 x 4
patches = rearrange(x[:, 0] <= -0.5, 'B T (h a) (w b) -> B T h w (a b)', h=h, w=w)  # (B, T, h, w, pixels)
black = patches.all(-1)                                                               # (B, t, h, w), as codes
counts = torch.bincount(codes[black], minlength=vq.config.n_codes)
perplexity, _ = v.codebook_stats(counts)
print(f"{sys.argv[1]}: PSNR {v.psnr(rec, x).mean():.2f} dB, SSIM {v.ssim(rec, x).mean():.3f}; black patches: "
      f"{int((counts > 0).sum())} distinct codes of {vq.config.n_codes}, perplexity {perplexity:.1f}, top code "
      f"{counts.max() / counts.sum():.3f}; codes repeating from the previous latent frame "
      f"{(codes[:, 1:] == codes[:, :-1]).float().mean():.2f}")
