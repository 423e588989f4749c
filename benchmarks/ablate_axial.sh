#!/usr/bin/env bash
# The paper's table 3 at CPU scale (8x64x64 two-digit clips -> 8x16x16 codes, width 64): the VQ-VAE with axial
# attention on and off, the same 250 steps of batch 8 each, then held-out NMSE, PSNR and SSIM on 128 videos of
# unseen digits.
# Usage: MNIST_DIR=DIR bash benchmarks/ablate_axial.sh   (DIR: a folder with the MNIST IDX .gz files)
set -euo pipefail
cd "$(dirname "$0")/.."
MNIST=${MNIST_DIR:?set MNIST_DIR to a folder with the MNIST .gz files: MNIST_DIR=DIR bash $0}
for axial in true false; do
    python videogpt.py train-vqvae --preset mnist-cpu --downsample 1 4 4 --mnist-dir $MNIST --batch-size 8 --lr 1e-3 --warmup 25 \
        --num-workers 1 --log-every 25 --steps 250 --ckpt-every 250 --sample-every 250 --overwrite true \
        --axial-attention $axial --out-dir runs/ablate/axial-$axial
    python videogpt.py eval --vqvae runs/ablate/axial-$axial/ckpt.pt --mnist-dir $MNIST --n 128 \
        --json runs/ablate/axial-$axial.json
done
