"""Samples per second of each dataset through a single-process DataLoader (batch 16): is data the bottleneck?

    python benchmarks/bench_data.py [--mnist-dir DIR] [--batches 50]

BAIR and the video folder are generated here (a small BAIR-layout tar, random GIFs), so nothing is downloaded.
"""
import argparse
import itertools
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402


def samples_per_second(dataset, batches, batch_size=16):
    """Throughput of a shuffled single-process DataLoader after one warm-up batch (cycling short datasets)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0, drop_last=True)
    stream = itertools.chain.from_iterable(itertools.repeat(loader))
    next(stream)
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * batch_size / (time.perf_counter() - start)


def write_bair_tar(folder, files=4, per_file=16, seed=0):
    """A tar in the BAIR layout (random pixels) with `files` train files and one test file."""
    from tfrecord.writer import TFRecordWriter
    rng = np.random.default_rng(seed)
    names = [f'softmotion30_44k/train/traj_{i}.tfrecords' for i in range(files)] + ['softmotion30_44k/test/t.tfrecords']
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        writer = TFRecordWriter(str(folder / name))
        for _ in range(per_file):
            datum = {}
            for i in range(30):
                datum[f'{i}/image_aux1/encoded'] = (rng.bytes(64 * 64 * 3), 'byte')
                datum[f'{i}/image_main/encoded'] = (rng.bytes(64 * 64 * 3), 'byte')
                datum[f'{i}/action'] = (rng.standard_normal(4).tolist(), 'float')
                datum[f'{i}/endeffector_pos'] = (rng.standard_normal(3).tolist(), 'float')
            writer.write(datum)
        writer.close()
    with tarfile.open(folder / 'bair.tar', 'w') as tar:
        tar.add(folder / 'softmotion30_44k', arcname='softmotion30_44k')
    return folder / 'bair.tar', len(names) * per_file


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--mnist-dir', help='folder with the MNIST .gz files (default: rendered font digits)')
    p.add_argument('--batches', type=int, default=50)
    args = p.parse_args()
    # One thread, as in a DataLoader worker: on a busy machine torch's intra-op threads fight other jobs for cores
    # and even collating a batch slows down 100x, which would measure the machine, not the datasets.
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images, _, source = data.load_mnist(args.mnist_dir, download=False)
        mmnist = data.MovingMNIST(images, n_frames=20)
        rows.append((f'MovingMNIST 1x20x64x64 ({source})', samples_per_second(mmnist, args.batches)))

        tar_path, n = write_bair_tar(tmp)
        start = time.perf_counter()
        data.convert_bair(tar_path, tmp / 'bair')
        convert = n / (time.perf_counter() - start)
        bair = data.BAIR(tmp / 'bair', 'train', n_frames=16)
        rows.append((f'BAIR 3x16x64x64 + actions (convert: {convert:.0f} seq/s)',
                     samples_per_second(bair, args.batches)))

        rng = np.random.default_rng(0)
        for i in range(16):  # 16 GIFs of 64 frames at 128x160 in two class folders; 64 colours keep writing quick
            path = tmp / 'videos' / f'class{i % 2}' / f'v{i}.gif'
            path.parent.mkdir(parents=True, exist_ok=True)
            iio.imwrite(path, (rng.integers(0, 4, (64, 128, 160, 3)) * 85).astype(np.uint8), duration=40, loop=0)
        start = time.perf_counter()
        folder = data.VideoFolder(tmp / 'videos', n_frames=16, resolution=64, cache_dir=tmp / 'cache')
        decode = 16 * 64 / (time.perf_counter() - start)
        rows.append((f'VideoFolder 3x16x64x64, cached (first decode: {decode:.0f} frames/s)',
                     samples_per_second(folder, args.batches)))
    for name, rate in rows:
        print(f'{rate:10.0f} samples/s  {name}')


if __name__ == '__main__':
    main()
