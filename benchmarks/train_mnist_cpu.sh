#!/usr/bin/env bash
# The pretrained Moving MNIST models (weights/moving-mnist/): both stages on a 2-core CPU, then export and evaluate.
# Rerun it after an interruption: each stage resumes from its last checkpoint (every 100 / 50 steps).
# MNIST_DIR (required): a folder with the MNIST IDX .gz files; OUT: the run folder (default runs/mm).
# Usage: MNIST_DIR=DIR bash benchmarks/train_mnist_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MNIST=${MNIST_DIR:?set MNIST_DIR to a folder with the MNIST .gz files: MNIST_DIR=DIR bash $0}
OUT=${OUT:-runs/mm}
resume() { if [ -f "$1/ckpt.pt" ]; then echo "--resume true"; fi; }
common="--preset mnist-cpu --mnist-dir $MNIST --batch-size 8 --lr 1e-3 --warmup 100 --num-workers 1 --log-every 25"
python videogpt.py train-vqvae $common --out-dir $OUT/vqvae --steps 3000 --ckpt-every 100 --sample-every 300 \
    $(resume $OUT/vqvae)
python videogpt.py train-gpt $common --out-dir $OUT/gpt --steps 700 --ckpt-every 50 --sample-every 350 \
    --vqvae $OUT/vqvae/ckpt.pt $(resume $OUT/gpt)
python -c "import videogpt as v; v.export_weights('$OUT/vqvae/ckpt.pt', 'weights/moving-mnist/vqvae.pt'); \
v.export_weights('$OUT/gpt/ckpt.pt', 'weights/moving-mnist/gpt.pt', vqvae_rel='vqvae.pt')"
sha256sum weights/moving-mnist/*.pt
python videogpt.py eval --vqvae weights/moving-mnist/vqvae.pt --gpt weights/moving-mnist/gpt.pt --mnist-dir $MNIST \
    --n 128 --batch-size 32 --top-k 1 --json assets/moving_mnist_eval.json
python videogpt.py sample --gpt weights/moving-mnist/gpt.pt --n 8 --out assets/moving_mnist_samples.gif
