#!/usr/bin/env bash
# The committed two-digit Moving MNIST models (weights/moving-mnist/), end to end on a 2-core CPU: the VQ-VAE, the
# prior on 100,000 clips encoded once, then that prior told the two digits (class-conditional, fine-tuned from it),
# export, scores by the digit reader, and the README's pictures.
# Rerun it after an interruption: each stage resumes from its last checkpoint (every 200 / 100 steps).
# Usage: MNIST_DIR=DIR bash benchmarks/train_mnist_cpu.sh   (DIR: MNIST's IDX .gz files; OUT: run folder, runs/mm)
set -euo pipefail
cd "$(dirname "$0")/.."
MNIST=${MNIST_DIR:?set MNIST_DIR to a folder with the MNIST .gz files: MNIST_DIR=DIR bash $0}
OUT=${OUT:-runs/mm}
GPT_STEPS=${GPT_STEPS:-12000}
COND_STEPS=${COND_STEPS:-2200}
resume() { if [ -f "$1/ckpt.pt" ]; then echo "--resume true"; fi; }
common="--preset mnist-cpu --mnist-dir $MNIST --num-workers 1 --log-every 50"
python videogpt.py train-vqvae $common --batch-size 8 --lr 1e-3 --warmup 100 --steps 6000 --ckpt-every 200 \
    --sample-every 500 --out-dir $OUT/vqvae $(resume $OUT/vqvae)
python videogpt.py train-gpt $common --batch-size 32 --lr 6e-4 --warmup 200 --steps $GPT_STEPS --ckpt-every 100 \
    --sample-every 1000 --dataset-size 100000 --codes-file $OUT/codes.pt --vqvae $OUT/vqvae/ckpt.pt \
    --out-dir $OUT/gpt $(resume $OUT/gpt)
# Its norms become conditional ones on the digits' classes (a count per class), one clip in ten on the null class
python videogpt.py train-gpt $common --batch-size 32 --lr 3e-4 --warmup 100 --steps $COND_STEPS --ckpt-every 100 \
    --sample-every 1000 --dataset-size 100000 --codes-file $OUT/codes.pt --vqvae $OUT/vqvae/ckpt.pt \
    --init-from $OUT/gpt/ckpt.pt --cond-dim 10 --cond-dropout 0.1 --out-dir $OUT/cond $(resume $OUT/cond)
python -c "import videogpt as v; v.export_weights('$OUT/vqvae/ckpt.pt', 'weights/moving-mnist/vqvae.pt'); \
v.export_weights('$OUT/cond/ckpt.pt', 'weights/moving-mnist/gpt.pt', vqvae_rel='vqvae.pt')"
sha256sum weights/moving-mnist/*.pt
python benchmarks/mnist_scores.py --vqvae weights/moving-mnist/vqvae.pt --gpt weights/moving-mnist/gpt.pt \
    --mnist-dir $MNIST --n 128 --guidance 3 --json assets/moving_mnist_scores.json
python videogpt.py eval --vqvae weights/moving-mnist/vqvae.pt --gpt weights/moving-mnist/gpt.pt --mnist-dir $MNIST \
    --n 128 --batch-size 32 --top-k 1 --json assets/moving_mnist_eval.json
python videogpt.py sample --gpt weights/moving-mnist/gpt.pt --n 8 --guidance 3 \
    --labels 0,1 2,3 4,5 6,7 8,9 3,7 1,4 5,9 --out assets/moving_mnist_samples.gif
