"""Datasets for VideoGPT (Yan et al. 2021, https://arxiv.org/abs/2104.10157): Moving MNIST, BAIR, folders of videos.

Departs from the original repository (github.com/wilson1yan/VideoGPT) where it made data silently wrong or slow:
Moving MNIST is generated here (Srivastava et al. 2015, https://arxiv.org/abs/1502.04681) from the official MNIST
files, BAIR is converted from its TFRecords without TensorFlow and with every window start reachable, and decoded
video clips are cached so that training is not bound by the video decoder.

Every dataset returns a dict: 'video' float32 (C, T, H, W) in [-0.5, 0.5], plus 'actions' (T, 4) for BAIR and
'label' int64 for labelled Moving MNIST (() with one digit, (2,) with two) and for a VideoFolder with class subfolders.
Axis legend: N samples, T frames, H/W pixels, C channels.

For videogpt.py's training loop and command line: make_dataset (a dataset by name), batches (batches that --resume
replays exactly), gpt_inputs (a batch's conditioning), encode_dataset / CodesDataset (a dataset encoded once into
codes), the checkpoint files (save_checkpoint, load_checkpoint, export_weights, find_vqvae), checked_files (the
pretrained weights' sha256), sample_inputs / eval_inputs (the commands' data, checked before any work), the command
line's file checks (check_paths, check_writable, check_eval_files), save_video_grid and plot_metrics.
For videogpt.py's models, out of their way: the checks on their configs and inputs (check_video, check_prior_inputs,
check_knobs, ...; every error names the fix) and the scores of videos (psnr, ssim, fvd, prediction_scores), beside
the digit reader that reads Moving MNIST frames as a viewer would.
"""
import argparse
import contextlib
import glob
import gzip
import hashlib
import http.client
import io
import json
import math
import os
import struct
import sys
import tarfile
import tempfile
import time
import urllib.request
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.data import Dataset
from tqdm import tqdm

CACHE_DIR = Path(os.environ.get('VIDEOGPT_CACHE', '~/.cache/videogpt')).expanduser()
# Long enough for a slow mirror to answer, short enough that an offline machine gives up within a minute.
DOWNLOAD_TIMEOUT = 30.0


# ------------------------------------------------------------------------------------------------------------------
# Helpers: value range, checksums, downloads


def to_video(frames):
    """uint8 frames (T, H, W) or (T, H, W, C) -> float32 tensor (C, T, H, W) in [-0.5, 0.5], the model's range."""
    # In numpy, not torch: torch would spread this small op over its intra-op threads, which under a training job
    # in the same process (num_workers=0) made it 100x slower in bench_data.py. Same float32 result either way.
    x = torch.from_numpy(np.asarray(frames, np.float32) / np.float32(255) - np.float32(0.5))
    return x.unsqueeze(0) if x.ndim == 3 else rearrange(x, 't h w c -> c t h w')


def checksum(path, algorithm='md5'):
    """The hex digest of a file, read in 4 MB chunks."""
    h = hashlib.new(algorithm)
    with open(path, 'rb') as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def checked_files(folder, digests):
    """Folder's files named by digests ({file: sha256}) as in-memory files, each read once and checked against its
    digest: what is loaded is exactly what was hashed."""
    files, fix = [], 'git checkout it again, or git lfs pull'
    for file, digest in digests.items():
        path = os.path.join(folder, file)
        try:
            raw = Path(path).read_bytes()
        except OSError as e:  # missing, or a folder in its place
            raise FileNotFoundError(f"{path} cannot be read ({e.strerror}): {fix}") from e
        if (got := hashlib.sha256(raw).hexdigest()) != digest:  # a Git LFS pointer, a truncated or changed copy
            raise ValueError(f"{path} has sha256 {got}, expected {digest}: {fix}")
        files.append(io.BytesIO(raw))
    return files


def _download(url, dest, md5=None, hint=''):
    """Fetch url into dest through a '.part' file, so an interrupted download never looks finished."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + '.part')
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as r, open(part, 'wb') as f:
            total = int(r.headers.get('Content-Length') or 0) or None
            with tqdm(total=total, unit='B', unit_scale=True, desc=f'download {dest.name}') as bar:
                while chunk := r.read(1 << 20):
                    bar.update(f.write(chunk))
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, timeouts, refusals: OSError
        part.unlink(missing_ok=True)
        raise RuntimeError(f'could not download {url} ({e}). {hint}') from e
    if md5 is not None and (got := checksum(part)) != md5:
        part.unlink()
        raise RuntimeError(f'{url} downloaded with md5 {got}, expected {md5}. {hint}')
    os.replace(part, dest)
    return dest


# ------------------------------------------------------------------------------------------------------------------
# MNIST digits: official IDX files, download, and an honestly named font fallback


MNIST_MIRRORS = ['https://ossci-datasets.s3.amazonaws.com/mnist/',  # torchvision's mirror, then TensorFlow's
                 'https://storage.googleapis.com/cvdf-datasets/mnist/']
MNIST_FILES = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
               'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}
MNIST_MD5 = {'train-images-idx3-ubyte.gz': 'f68b3c2dcbeaaa9fbdd348bbdeb94873',
             'train-labels-idx1-ubyte.gz': 'd53e105ee54ea40749a09fcbcd1e9432',
             't10k-images-idx3-ubyte.gz': '9fb629c4189551a2d022fa330f9573f3',
             't10k-labels-idx1-ubyte.gz': 'ec29112dd5afa0611ce80d1b7f02629c'}
FALLBACK_SOURCE = 'rendered font digits, NOT MNIST'


UMASK = os.umask(0o022)  # read the process's umask (there is no getter) and put it back on the next line
os.umask(UMASK)
STALE_SECONDS = 60  # a temporary file untouched this long has no live writer: one writes far more often


def atomic_write(path, write):
    """write(tmp) into a new temporary file beside path, then rename it to path: a crash leaves the old file or the new
    one, never half of one. The temporary file is created exclusively (a planted file or link is never opened, and a
    link at path is replaced, not followed); on an error (a full disk) it is removed and the error names the path; one
    left by a killed writer is removed by a later write."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = None
    try:
        for old in Path(folder).glob(f'.{glob.escape(name)}.*.tmp'):
            with contextlib.suppress(FileNotFoundError):  # another process may remove it first
                if time.time() - old.lstat().st_mtime > STALE_SECONDS:
                    old.unlink()
        fd, tmp = tempfile.mkstemp(suffix='.tmp', prefix=f'.{name}.', dir=folder)  # per writer: ranks may share a cache
        os.close(fd)
        with contextlib.suppress(OSError):  # some mounted disks have no modes to set
            os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp's 0600 would hide the file from everyone else
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)):  # torch.save reports a full disk as a RuntimeError
            raise OSError(f'could not write {path} ({type(e).__name__}: {(str(e).splitlines() or [""])[0]}); '
                          'free some disk space or write elsewhere') from e
        raise


def write_json(path, obj):
    """obj as indented JSON, written atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1)))


def write_jsonl(path, rows, mode='w'):
    """Rows (dicts) as JSON lines: mode 'w' writes the file anew, 'a' appends to it."""
    with open(path, mode) as f:
        f.writelines(json.dumps(row) + '\n' for row in rows)


def read_idx(path, magic):
    """uint8 array shaped by an IDX file's header (.gz or raw); magic 2051 = images (N, H, W), 2049 = labels (N,)."""
    path = Path(path)
    try:
        with (gzip.open if path.suffix == '.gz' else open)(path, 'rb') as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # a cut .gz ends before its end-of-stream marker: EOFError
        raise ValueError(f'{path} is truncated or not an IDX file ({e}); download it again') from e
    # The magic number's low byte is the number of dims, the next one the type (0x08 = uint8), e.g. 2051 = 0x0803.
    ndim = magic & 0xFF
    if len(raw) < 4 + 4 * ndim or int.from_bytes(raw[:4], 'big') != magic:
        raise ValueError(f'{path} is not an IDX file with magic number {magic}; is it the right MNIST file?')
    dims = struct.unpack(f'>{ndim}I', raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise ValueError(f'{path} is truncated or corrupt: its header says {dims} = {math.prod(dims)} bytes, '
                         f'found {data.size}; download it again')
    return data.reshape(dims)


def _read_mnist_pair(folder, split):
    images_file, labels_file = (Path(folder) / name for name in MNIST_FILES[split])
    images, labels = read_idx(images_file, 2051), read_idx(labels_file, 2049).astype(np.int64)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(f'{images_file} holds {images.shape}, {labels_file} {labels.shape}: '
                         'expected N 28x28 images and N labels from the same MNIST split')
    return images, labels


def load_mnist(mnist_dir=None, split='train', download=True, fallback=True, cache_dir=None):
    """(images uint8 (N, 28, 28), labels int64 (N,), source str) from mnist_dir, the cache, a mirror, or fonts.

    Files a user puts in mnist_dir are validated by their IDX headers only, so a subset of MNIST works. Downloads go to
    cache_dir (default ~/.cache/videogpt/mnist) and are md5-checked. With no files and no network, fallback=True
    renders digits from fonts and says so; fallback=False raises.
    """
    if mnist_dir is not None:  # the user asked for these files: never fall back behind their back
        missing = [n for n in MNIST_FILES[split] if not (Path(mnist_dir) / n).exists()]
        if missing:
            raise FileNotFoundError(f'{mnist_dir} lacks {missing}; download them from {MNIST_MIRRORS[0]} into it')
        return (*_read_mnist_pair(mnist_dir, split), f'MNIST {split} from {mnist_dir}')
    cache = Path(cache_dir or CACHE_DIR / 'mnist')
    names = MNIST_FILES[split]
    # Cached files are md5-checked: a download cut short, or a proxy's error page, must not pass for MNIST.
    todo = [n for n in names if not (cache / n).exists() or checksum(cache / n) != MNIST_MD5[n]]
    errors = []
    for mirror in MNIST_MIRRORS if download else []:
        try:
            while todo:  # a file fetched from one mirror is not fetched again from the next
                _download(mirror + todo[0], cache / todo[0], MNIST_MD5[todo[0]])
                todo.pop(0)
        except RuntimeError as e:
            errors.append(str(e))
    if not todo:
        return (*_read_mnist_pair(cache, split), f'MNIST {split} from {cache}')
    how = (f'download {list(names)} from {MNIST_MIRRORS[0]} (or yann.lecun.com/exdb/mnist) into a directory and pass '
           f'it as mnist_dir (--mnist-dir), or put the official files in {cache}')
    if not fallback:
        raise RuntimeError(f'MNIST is not available ({"; ".join(errors) or "download=False"}). To fix: {how}.')
    print(f'MNIST not available offline; using {FALLBACK_SOURCE} (10,000 jittered glyphs). For real MNIST: {how}.')
    return (*render_font_digits(10_000), FALLBACK_SOURCE)


FRESH = 1 << 62  # an index space no run exhausts: every training item a new video
HELD_OUT_FRACTION = 0.1  # of the training split's digits, held out when MNIST's test split is not there


def mnist_digits(mnist_dir=None, train=True, download=True):
    """(images, labels, source) for Moving MNIST, split so that held-out videos never show a digit seen in training:
    training takes the first 90% of MNIST's training digits; held-out videos take MNIST's test split if it is there,
    else the remaining 10%."""
    if not train:
        try:
            return load_mnist(mnist_dir, 'test', download=download, fallback=False)
        except (FileNotFoundError, RuntimeError):
            pass  # no test split: the held-out slice of the training split
    images, labels, source = load_mnist(mnist_dir, 'train', download=download)
    n = len(images) - max(1, round(len(images) * HELD_OUT_FRACTION))
    if train:
        return images[:n], labels[:n], f'{source}, digits 0-{n - 1} (the last {len(images) - n} are held out)'
    return images[n:], labels[n:], f'{source}, digits {n}-{len(images) - 1}, held out from training'


def render_font_digits(n, seed=0):
    """(images uint8 (n, 28, 28), labels int64 (n,)): digits 0-9 in matplotlib's bundled DejaVu fonts, NOT MNIST.

    Each glyph is drawn once per font and weight with the Agg renderer, fitted into an 18x18 box centred in 28x28
    (MNIST's box is 20x20; the margin leaves room for the jitter), then warped by a small random affine map.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(1, 1), dpi=96)
    canvas = FigureCanvasAgg(fig)
    text = fig.text(0.5, 0.5, '', ha='center', va='center', fontsize=60)
    templates = []  # rendered at 2x (56 px) and averaged down after warping, which antialiases the warp
    # Three families x two weights = six styles per digit, so that a class is not a single glyph.
    for family in ('DejaVu Sans', 'DejaVu Serif', 'DejaVu Sans Mono'):
        for weight in ('normal', 'bold'):
            for digit in range(10):
                text.set(text=str(digit), family=family, weight=weight)
                canvas.draw()
                ink = 255 - np.asarray(canvas.buffer_rgba())[..., 0].astype(np.float32)  # black text on white
                ys, xs = np.nonzero(ink)
                ink = torch.from_numpy(ink[ys.min():ys.max() + 1, xs.min():xs.max() + 1])[None, None]
                h, w = (round(s * 36 / max(ink.shape[2:])) for s in ink.shape[2:])  # longer side 36 px at 2x
                glyph = F.interpolate(ink, size=(h, w), mode='bilinear', antialias=True)[0, 0]
                canvas56 = torch.zeros(56, 56)
                canvas56[(56 - h) // 2:(56 - h) // 2 + h, (56 - w) // 2:(56 - w) // 2 + w] = glyph
                templates.append(canvas56)
    templates = torch.stack(templates).view(6, 10, 56, 56)  # (style, digit, 56, 56)
    g = torch.Generator().manual_seed(seed)
    labels, style = torch.randint(10, (n,), generator=g), torch.randint(6, (n,), generator=g)
    # Jitter in normalised coordinates: +-12 degrees, 90-110 % scale, +-0.2 shear, +-1.5 px shift (1.5 / 14 px).
    angle, scale, shear, shift = (torch.rand(n, k, generator=g) * 2 - 1 for k in (1, 1, 1, 2))
    angle, scale, shear, shift = angle * math.radians(12), 1 + 0.1 * scale, 0.2 * shear, shift * 1.5 / 14
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.cat([cos, -sin + shear, shift[:, :1]], 1),
                         torch.cat([sin, cos, shift[:, 1:]], 1)], 1)  # (n, 2, 3) output -> input coordinates
    grid = F.affine_grid(theta, (n, 1, 56, 56), align_corners=False)
    warped = F.grid_sample(templates[style, labels][:, None], grid, align_corners=False)  # (n, 1, 56, 56)
    images = F.avg_pool2d(warped, 2)[:, 0].clamp(0, 255).round().to(torch.uint8)  # (n, 28, 28)
    return images.numpy(), labels.numpy()


# ------------------------------------------------------------------------------------------------------------------
# Moving MNIST (Srivastava et al. 2015): generated on the fly, and the fixed test set


MMNIST_SIZE, DIGIT_SIZE = 64, 28
# The original generator moves 0.1 of the free range (64 - 28 = 36 px) per frame: 3.6 px, in a uniform direction.
MMNIST_STEP = 3.6


class MovingMNIST(Dataset):
    """{'video': (1, n_frames, 64, 64) in [-0.5, 0.5]}: n_digits bouncing digits; sample i is fixed by (seed, i).

    With labels (N,), items also hold 'label', for class-conditional priors: the digit's class () with one digit, the
    digits' classes (n_digits,) with more (a prior reads them as a vector of counts per class).
    """

    def __init__(self, digits, n_frames=20, n_digits=2, length=10_000, seed=0, labels=None):
        # length only sets the epoch size (default: as many as the fixed test set); videos are made on the fly.
        assert digits.dtype == np.uint8 and digits.shape[1:] == (DIGIT_SIZE, DIGIT_SIZE), digits.shape
        if labels is not None and len(labels) != len(digits):
            raise ValueError(f'labels need one label per digit: got {len(labels)} labels for {len(digits)} digits')
        self.digits, self.n_frames, self.n_digits, self.length, self.seed = digits, n_frames, n_digits, length, seed
        self.labels = labels

    def __len__(self):
        return self.length

    def trajectory(self, idx):
        """(digit ids (n_digits,), top-left corners int (T, n_digits, 2) as (y, x)) of sample idx."""
        # Seeding per index, not per worker, keeps sample i identical for any num_workers and any visiting order.
        rng = np.random.default_rng([self.seed, idx])
        ids = rng.integers(len(self.digits), size=self.n_digits)
        free = MMNIST_SIZE - DIGIT_SIZE  # corners live in [0, 36] so the whole digit stays on the canvas
        pos = rng.uniform(0, free, size=(self.n_digits, 2))
        angle = rng.uniform(0, 2 * np.pi, size=self.n_digits)
        vel = MMNIST_STEP * np.stack([np.sin(angle), np.cos(angle)], 1)  # (n_digits, 2) px per frame
        corners = np.empty((self.n_frames, self.n_digits, 2), np.int64)
        for t in range(self.n_frames):
            corners[t] = np.rint(pos)  # position is continuous; only pasting rounds to the pixel grid
            pos += vel
            # Bounce as the original does: clamp to the edge and reflect the velocity component that crossed it.
            out = (pos < 0) | (pos > free)
            vel[out] *= -1
            np.clip(pos, 0, free, out=pos)
        return ids, corners

    def __getitem__(self, idx):
        ids, corners = self.trajectory(idx)
        video = np.zeros((self.n_frames, MMNIST_SIZE, MMNIST_SIZE), np.uint8)  # (T, H, W)
        for t in range(self.n_frames):
            for digit, (y, x) in zip(ids, corners[t]):
                patch = video[t, y:y + DIGIT_SIZE, x:x + DIGIT_SIZE]
                np.maximum(patch, self.digits[digit], out=patch)  # pixel-wise max where digits overlap, as the original
        item = {'video': to_video(video)}
        if self.labels is not None:  # the classes, for class-conditional priors
            classes = torch.as_tensor(self.labels[ids], dtype=torch.int64)
            item['label'] = classes[0] if self.n_digits == 1 else classes
        return item

    def classes(self, idx):
        """(n_digits,) int64: the classes of the digits that video idx shows (for the digit reader's 'kept')."""
        if self.labels is None:
            raise ValueError("this MovingMNIST was built without labels: pass labels= to know its digits' classes")
        return torch.as_tensor(self.labels[self.trajectory(idx)[0]], dtype=torch.int64)


MMNIST_TEST_URL = 'http://www.cs.toronto.edu/~nitish/unsupervised_video/mnist_test_seq.npy'
MMNIST_TEST_MD5 = 'be083ec986bfe91a449d63653c411eb2'


class MovingMNISTTest(Dataset):
    """{'video': (1, T, 64, 64), 'context': its first n_context frames, 'target': the rest}, all in [-0.5, 0.5]."""

    def __init__(self, path, n_context=10):
        self.path, self.n_context, self._seq = Path(path), n_context, None
        self.shape = np.load(self.path, mmap_mode='r').shape  # (T, N, 64, 64): time first, as the file stores it

    def __len__(self):
        return self.shape[1]

    def __getstate__(self):  # DataLoader workers pickle the dataset: a memory map would be pickled as its data
        return {**self.__dict__, '_seq': None}

    def __getitem__(self, idx):
        if self._seq is None:  # opened lazily, in the process that reads it
            self._seq = np.load(self.path, mmap_mode='r')
        video = to_video(self._seq[:, idx])  # (1, T, 64, 64)
        return {'video': video, 'context': video[:, :self.n_context], 'target': video[:, self.n_context:]}


def load_moving_mnist_test(path_or_dir=None, md5=MMNIST_TEST_MD5, download=True, n_context=10):
    """The fixed test set mnist_test_seq.npy (20, 10000, 64, 64) as a MovingMNISTTest (standard 10 -> 10 split).

    path_or_dir: the file, or a folder holding it (default ~/.cache/videogpt). md5=None skips the checksum, for
    files you made yourself. download=True fetches a missing file into the folder, never to a mistyped file path.
    """
    path = Path(path_or_dir or CACHE_DIR)
    is_dir = path_or_dir is None or path.is_dir()
    path = path / 'mnist_test_seq.npy' if is_dir else path
    hint = f'Download {MMNIST_TEST_URL} by hand and pass its path (or its folder) as path_or_dir.'
    if not path.exists():
        if not (download and is_dir):
            raise FileNotFoundError(f'{path} does not exist. {hint}')
        _download(MMNIST_TEST_URL, path, md5, hint)
    if md5 is not None and (got := checksum(path)) != md5:
        raise ValueError(f'{path} has md5 {got}, expected {md5}: re-download it from {MMNIST_TEST_URL}, '
                         'or pass md5=None for a file you made yourself')
    try:
        seq = np.load(path, mmap_mode='r')
    except ValueError as e:
        raise ValueError(f'{path} is not a readable .npy file ({e}). {hint}') from e
    if seq.dtype != np.uint8 or seq.ndim != 4 or seq.shape[2:] != (64, 64) or seq.shape[0] <= n_context:
        raise ValueError(f'{path} holds {seq.dtype} {seq.shape}; expected uint8 (T, N, 64, 64), time first, '
                         f'with T > n_context = {n_context} (the original file is (20, 10000, 64, 64))')
    return MovingMNISTTest(path, n_context)


# ------------------------------------------------------------------------------------------------------------------
# BAIR robot pushing (Ebert et al. 2017): TFRecords inside a tar -> memory-mapped .npy


BAIR_URL = 'http://rail.eecs.berkeley.edu/datasets/bair_robot_pushing_dataset_v0.tar'
BAIR_FRAMES, BAIR_SIZE = 30, 64  # every BAIR sequence has 30 frames of 64x64 RGB
BAIR_MARKER = 'bair_done.json'  # written last by convert_bair: its absence means the conversion did not finish


def download_bair(out_dir):
    """Download the 30 GB BAIR tar into out_dir (no md5 is published) and return its path."""
    dest = Path(out_dir) / Path(BAIR_URL).name
    hint = f'Download {BAIR_URL} by hand and run: python data.py bair --tar PATH --out DIR'
    return dest if dest.exists() else _download(BAIR_URL, dest, hint=hint)


def _record_length(header, name, i):
    """Data length from a record's 12-byte header: uint64 length + its masked crc32c (TFRecord, little endian)."""
    from tfrecord.writer import TFRecordWriter  # its masked_crc is the TFRecord checksum, built on crc32c
    if len(header) < 12 or TFRecordWriter.masked_crc(header[:8]) != header[8:]:
        raise ValueError(f'{name}: record {i} is truncated or corrupt; download the BAIR tar again')
    return struct.unpack('<Q', header[:8])[0]


def _iter_tfrecords(f, name):
    """Yield each record's bytes from a TFRecord file object; the framing and both CRCs are checked."""
    from tfrecord.writer import TFRecordWriter
    i = 0
    while header := f.read(12):
        length = _record_length(header, name, i)
        data, footer = f.read(length), f.read(4)  # the data, then the masked crc32c of the data
        if len(data) < length or TFRecordWriter.masked_crc(data) != footer:
            raise ValueError(f'{name}: record {i} is truncated or corrupt; download the BAIR tar again')
        yield data
        i += 1


def _count_tfrecords(f, size, name):
    """Number of records in a TFRecord file object of `size` bytes, reading only their headers."""
    count, offset = 0, 0
    while offset < size:  # a record is 12 header bytes + data + 4 crc bytes
        f.seek(offset)
        offset += 12 + _record_length(f.read(12), name, count) + 4
        count += 1
    if offset != size:
        raise ValueError(f'{name}: record {count - 1} is truncated; download the BAIR tar again')
    return count


def _parse_bair_example(record, name):
    """frames uint8 (30, 64, 64, 3) and actions float32 (30, 4) from one serialized tf.train.Example."""
    from tfrecord import example_pb2
    feature = example_pb2.Example.FromString(record).features.feature
    frames = np.empty((BAIR_FRAMES, BAIR_SIZE, BAIR_SIZE, 3), np.uint8)
    actions = np.empty((BAIR_FRAMES, 4), np.float32)
    for i in range(BAIR_FRAMES):
        # image_aux1 is the camera the BAIR video models use; image_main and endeffector_pos are ignored.
        image, action = feature.get(f'{i}/image_aux1/encoded'), feature.get(f'{i}/action')
        image = image.bytes_list.value if image is not None else []
        action = action.float_list.value if action is not None else []
        if len(image) != 1 or len(image[0]) != frames[i].nbytes or len(action) != 4:
            raise ValueError(f'{name}: frame {i} lacks a raw 64x64x3 image_aux1 or a 4-float action; is this BAIR?')
        frames[i] = np.frombuffer(image[0], np.uint8).reshape(BAIR_SIZE, BAIR_SIZE, 3)
        actions[i] = action
    return frames, actions


def convert_bair(tar_path, out_dir, n_val_files=1):
    """Stream bair_robot_pushing_dataset_v0.tar into out_dir/{train,val,test}_{frames,actions}.npy (+ marker).

    frames: uint8 (N, 30, 64, 64, 3); actions: float32 (N, 30, 4). Nothing is extracted to disk and TensorFlow is not
    needed. Validation split: the last n_val_files files of softmotion30_44k/train in sorted name order (the default
    1 file = 256 sequences, the size of the test split); their names are listed in the marker JSON.
    """
    name = 'its list of files'  # what is being read, for the error message if the tar turns out cut short there
    try:
        with tarfile.open(tar_path) as tar:  # seekable: the counting pass below skips over record bodies
            members = sorted((m for m in tar.getmembers() if m.name.endswith('.tfrecords')), key=lambda m: m.name)
            train = [m for m in members if '/train/' in m.name]
            splits = {'train': train[:-n_val_files], 'val': train[-n_val_files:],
                      'test': [m for m in members if '/test/' in m.name]}
            if n_val_files < 1 or not all(splits.values()):
                raise ValueError(f'{tar_path} has {len(train)} train and {len(splits["test"])} test files, too few '
                                 f'for a validation split of {n_val_files} >= 1 files; expected '
                                 'softmotion30_44k/{train,test}/*.tfrecords')
            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / BAIR_MARKER).unlink(missing_ok=True)  # a rerun must not leave an old marker over new files
            # Pass 1 reads only record headers: each split's arrays get their exact size up front, and a truncated
            # file fails here, before anything is written. Pass 2 decodes every record into memory-mapped arrays.
            counts = {s: [] for s in splits}
            for split, ms in splits.items():
                for m in ms:
                    name = m.name
                    counts[split].append(_count_tfrecords(tar.extractfile(m), m.size, m.name))
            bar = tqdm(total=sum(map(sum, counts.values())), desc='convert BAIR', unit='seq')
            for split, ms in splits.items():
                n = sum(counts[split])
                frames = np.lib.format.open_memmap(out_dir / f'{split}_frames.npy.partial', 'w+', np.uint8,
                                                   (n, BAIR_FRAMES, BAIR_SIZE, BAIR_SIZE, 3))
                actions = np.lib.format.open_memmap(out_dir / f'{split}_actions.npy.partial', 'w+', np.float32,
                                                    (n, BAIR_FRAMES, 4))
                i = 0
                for m in ms:
                    name = m.name
                    for record in _iter_tfrecords(tar.extractfile(m), m.name):
                        frames[i], actions[i] = _parse_bair_example(record, m.name)
                        i += 1
                        bar.update()
                frames.flush(), actions.flush()
                del frames, actions
            bar.close()
    except (tarfile.TarError, EOFError) as e:
        raise OSError(f'{tar_path}: {name} is unreadable or cut short ({e}); download the tar again from '
                      f'{BAIR_URL}') from e
    for split in splits:  # only now, with every split written, do files get their final names
        for kind in ('frames', 'actions'):
            os.replace(out_dir / f'{split}_{kind}.npy.partial', out_dir / f'{split}_{kind}.npy')
    marker = {'source': str(tar_path), 'n_val_files': n_val_files,
              'val_rule': f'last {n_val_files} train file(s) in sorted name order',
              'splits': {s: {'n': sum(counts[s]), 'files': [m.name for m in ms]} for s, ms in splits.items()}}
    write_json(out_dir / BAIR_MARKER, marker)
    return marker


class BAIR(Dataset):
    """{'video': (3, n_frames, 64, 64) in [-0.5, 0.5], 'actions': (n_frames, 4)}: a window of a 30-frame sequence.

    train=True draws the start uniformly from [0, 30 - n_frames], every start included (the original never drew the
    last one); train=False always starts at frame 0, the usual evaluation protocol, so evaluation is deterministic.
    """

    def __init__(self, root, split='train', n_frames=16, train=True):
        self.root, self.split, self.n_frames, self.train = Path(root), split, n_frames, train
        if not (self.root / BAIR_MARKER).exists():
            raise FileNotFoundError(f'{self.root} has no {BAIR_MARKER}: the BAIR conversion never ran or did not '
                                    f'finish. Run: python data.py bair --tar bair_robot_pushing_dataset_v0.tar '
                                    f'--out {self.root}')
        marker = json.loads((self.root / BAIR_MARKER).read_text())
        if split not in marker['splits'] or not 1 <= n_frames <= BAIR_FRAMES:
            raise ValueError(f'need split in {list(marker["splits"])} and n_frames in [1, {BAIR_FRAMES}]')
        self.length, self._arrays = marker['splits'][split]['n'], None

    def __len__(self):
        return self.length

    def __getstate__(self):  # DataLoader workers pickle the dataset: a memory map would be pickled as its data
        return {**self.__dict__, '_arrays': None}

    def window_start(self, idx):
        """First frame of sample idx's window: uniform in [0, 30 - n_frames] when training, else 0."""
        return int(torch.randint(BAIR_FRAMES - self.n_frames + 1, ())) if self.train else 0

    def __getitem__(self, idx):
        if self._arrays is None:  # opened lazily, in the process that reads it
            self._arrays = [np.load(self.root / f'{self.split}_{k}.npy', mmap_mode='r') for k in ('frames', 'actions')]
        frames, actions = self._arrays
        s = self.window_start(idx)
        return {'video': to_video(frames[idx, s:s + self.n_frames]),  # (3, T, 64, 64)
                'actions': torch.from_numpy(actions[idx, s:s + self.n_frames].copy())}  # (T, 4); copy: read-only map


SYNTHETIC_TABLE = (205, 195, 175)  # the synthetic archive's light table top, and its squares' colours (distinct)
SYNTHETIC_COLOURS = np.array([[220, 40, 40], [40, 160, 40], [40, 70, 220], [240, 200, 30], [150, 40, 180],
                              [30, 30, 30]], np.uint8)  # six, far apart: a sample's colour is named without doubt


def write_bair_tar(path, n_train_files=2, n_test_files=1, records_per_file=2, seed=0):
    """Write a small synthetic tar in the exact BAIR layout and return its path. It exists for fast mode and demos.

    NOT BAIR: each 30-frame episode is a square of one of six colours on a plain table, pushed by its actions:
    action[:2] is the square's move (dy, dx) in pixels from frame i to frame i + 1, action[2:] is zero. The format is
    BAIR's: files softmotion30_44k/{train,test}/traj_A_to_B.tfrecords, and per frame i '{i}/image_aux1/encoded'
    (raw 64x64x3 uint8 bytes), '{i}/action' (4 floats), plus the keys that convert_bair ignores,
    '{i}/image_main/encoded' (here the same picture flipped) and '{i}/endeffector_pos' (3 floats: the square's centre
    and 0).
    """
    import tempfile
    from tfrecord.writer import TFRecordWriter
    rng, side, background = np.random.default_rng(seed), 12, np.array(SYNTHETIC_TABLE, np.uint8)  # 12 px: visible
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(path, 'w') as tar:
        for split, n_files in (('train', n_train_files), ('test', n_test_files)):
            for f in range(n_files):
                a = f * records_per_file  # names like the real ones, e.g. traj_0_to_255.tfrecords
                name = f'softmotion30_44k/{split}/traj_{a}_to_{a + records_per_file - 1}.tfrecords'
                writer = TFRecordWriter(os.path.join(tmp, 'part.tfrecords'))
                for _ in range(records_per_file):
                    pos, colour = rng.uniform(0, BAIR_SIZE - side, 2), SYNTHETIC_COLOURS[rng.integers(6)]
                    action = np.zeros(4, np.float32)
                    datum = {}
                    for i in range(BAIR_FRAMES):
                        frame = np.tile(background, (BAIR_SIZE, BAIR_SIZE, 1))  # (64, 64, 3)
                        y, x = np.rint(pos).astype(int)
                        frame[y:y + side, x:x + side] = colour
                        # Smooth pushes that revert to rest (an AR(1) velocity), at most 3 px per frame per axis.
                        action[:2] = (0.8 * action[:2] + rng.normal(0, 1.5, 2)).clip(-3, 3)
                        datum[f'{i}/image_aux1/encoded'] = (frame.tobytes(), 'byte')
                        datum[f'{i}/image_main/encoded'] = (frame[:, ::-1].tobytes(), 'byte')
                        datum[f'{i}/action'] = (action.tolist(), 'float')
                        datum[f'{i}/endeffector_pos'] = ([*(pos + side / 2).tolist(), 0.0], 'float')
                        pos = np.clip(pos + action[:2], 0, BAIR_SIZE - side)  # the push moves the next frame
                    writer.write(datum)
                writer.close()
                tar.add(os.path.join(tmp, 'part.tfrecords'), arcname=name)
    return Path(path)


def square_centres(video, tol=0.15):
    """Where the synthetic archive's square is in video (B, 3, T, H, W) in [-0.5, 0.5]: (B, T, 2) centres as (y, x)
    pixels, the mean place of the pixels off the table colour by more than tol in some channel (nan where none are),
    and (B, T, 3) their mean colour. The notebooks score a sample's square against the real one with it."""
    table = torch.tensor(SYNTHETIC_TABLE, dtype=torch.float32).view(1, 3, 1, 1, 1) / 255 - 0.5
    mask = ((video.float() - table).abs().amax(1) > tol).float()  # (B, T, H, W): the square's pixels
    n, (H, W) = mask.sum((2, 3)), video.shape[-2:]
    ys, xs = torch.arange(H, dtype=torch.float32).view(H, 1), torch.arange(W, dtype=torch.float32)
    centres = torch.stack([(mask * ys).sum((2, 3)) / n, (mask * xs).sum((2, 3)) / n], -1)  # 0 / 0: nan, no square
    colours = torch.einsum('bcthw,bthw->btc', video.float(), mask) / n[..., None]
    return centres, colours


# ------------------------------------------------------------------------------------------------------------------
# Folders of videos (UCF-101 and the like): decode once into a uint8 cache, then memory-map


VIDEO_EXTS = ('.mp4', '.gif', '.avi', '.webm')


def _resize_crop(frames, resolution):
    """uint8 (T, H, W, 3) -> uint8 (T, R, R, 3): shorter side to R with an antialiased resize, then a centre crop."""
    x = rearrange(torch.from_numpy(frames).float(), 't h w c -> t c h w')
    h, w = x.shape[2:]
    size = (round(h * resolution / min(h, w)), round(w * resolution / min(h, w)))  # the shorter side becomes R
    if size != (h, w):  # antialias low-pass filters before shrinking, or thin edges alias into moire
        x = F.interpolate(x, size=size, mode='bilinear', antialias=True, align_corners=False)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    x = x[:, :, top:top + resolution, left:left + resolution]
    return rearrange(x.round().clamp(0, 255).to(torch.uint8), 't c h w -> t h w c').numpy()


def _iter_frames(path):
    """Yield the frames of a video file as uint8 (H, W, 3) RGB arrays, one at a time."""
    if Path(path).suffix.lower() == '.gif':
        # Pillow directly, converting each frame to RGB: imageio's Pillow plugin fails on greyscale GIFs whose later
        # frames Pillow promotes to RGB ("No packer found from P to L").
        from PIL import Image, ImageSequence
        with Image.open(path) as im:
            yield from (np.asarray(frame.convert('RGB')) for frame in ImageSequence.Iterator(im))
    else:
        import imageio.v3 as iio
        yield from iio.imiter(path)  # .mp4/.avi/.webm through imageio-ffmpeg, which always gives RGB


def decode_video(path, resolution):
    """uint8 (T, R, R, 3): every stored frame of a video file, resized and centre-cropped (timing is ignored)."""
    chunks, chunk = [], []
    try:
        for frame in _iter_frames(path):  # resizing in chunks of 64 frames bounds memory for long videos
            chunk.append(frame)
            if len(chunk) == 64:
                chunks.append(_resize_crop(np.stack(chunk), resolution))
                chunk = []
        chunks += [_resize_crop(np.stack(chunk), resolution)] if chunk else []
    except Exception as e:  # decoders raise many types for a bad file: name the file whatever they are
        raise ValueError(f'cannot decode video {path} ({type(e).__name__}: {e}); re-encode it '
                         '(e.g. ffmpeg -i in.avi out.mp4) or remove it') from e
    if not chunks:
        raise ValueError(f'video {path} has no frames; re-encode it or remove it')
    return np.concatenate(chunks)


def read_video(path, resolution, channels=3):
    """A video file as float32 (channels, T, R, R) in [-0.5, 0.5]: decode_video's frames, grey if channels is 1."""
    video = to_video(decode_video(path, resolution))  # (3, T, R, R)
    return video.mean(0, keepdim=True) if channels == 1 else video


class VideoFolder(Dataset):
    """{'video': (3, n_frames, R, R) in [-0.5, 0.5], 'label': int64 ()}: clips of the videos under root.

    Files: .mp4/.gif/.avi/.webm, found recursively. Labels: when every video sits under an immediate subfolder of root,
    the sorted subfolder names are `classes` and a clip's label is its folder's index; otherwise there is no 'label'.
    A video gives len // n_frames clips: training draws a random start in the whole video for each, evaluation takes
    the consecutive non-overlapping windows. Videos shorter than n_frames are skipped with a warning naming them.
    Each video is decoded once into cache_dir (keyed by path, mtime, size and resolution) and memory-mapped after.
    """

    def __init__(self, root, n_frames=16, resolution=64, train=True, cache_dir=None):
        self.root, self.n_frames, self.train = Path(root), n_frames, train
        files = sorted(p for p in self.root.rglob('*') if p.suffix.lower() in VIDEO_EXTS and p.is_file())
        if not files:
            raise FileNotFoundError(f'no {"/".join(VIDEO_EXTS)} files under {self.root}')
        parts = [p.relative_to(self.root).parts for p in files]
        self.classes = sorted({q[0] for q in parts}) if all(len(q) > 1 for q in parts) else []
        cache_dir = Path(cache_dir or CACHE_DIR / 'videos')
        cache_dir.mkdir(parents=True, exist_ok=True)
        cached = []
        for path in files:  # a changed file gets a new key, so the cache never serves stale frames
            stat = path.stat()
            key = hashlib.sha1(f'{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}|{resolution}'.encode()).hexdigest()
            cached.append(cache_dir / f'{path.stem[:40]}-{key[:16]}.npy')
        todo = [(p, c) for p, c in zip(files, cached) if not c.exists()]
        for path, c in tqdm(todo, desc='decode videos into the cache', disable=not todo):
            frames = decode_video(path, resolution)

            def write(tmp):  # a file object: np.save would add '.npy' to the temporary file's name
                with open(tmp, 'wb') as f:
                    np.save(f, frames)
            atomic_write(c, write)  # a cache entry is never half written
        self.videos, self.labels, self.clips, short = [], [], [], []
        for path, c, q in zip(files, cached, parts):
            n = np.load(c, mmap_mode='r').shape[0]  # reads only the .npy header
            if n < n_frames:
                short.append(str(path))
                continue
            self.clips += [(len(self.videos), k) for k in range(n // n_frames)]  # (video, window index)
            self.videos.append(c)
            self.labels.append(self.classes.index(q[0]) if self.classes else -1)
        if short:
            warnings.warn(f'skipping {len(short)} video(s) shorter than n_frames={n_frames}: {short}')
        if not self.clips:
            raise ValueError(f'every video under {self.root} is shorter than n_frames={n_frames}')

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, idx):
        v, k = self.clips[idx]
        # Opened per item: thousands of open memory maps would each hold a file descriptor.
        frames = np.load(self.videos[v], mmap_mode='r')  # (T_video, R, R, 3)
        start = int(torch.randint(len(frames) - self.n_frames + 1, ())) if self.train else k * self.n_frames
        item = {'video': to_video(frames[start:start + self.n_frames])}  # (3, T, R, R)
        if self.classes:
            item['label'] = torch.tensor(self.labels[v], dtype=torch.int64)
        return item


# ------------------------------------------------------------------------------------------------------------------
# A dataset by name, for the training loop and the command line


def make_dataset(tcfg, n_frames, resolution, train=True):
    """The dataset named by tcfg.dataset (a videogpt.TrainConfig: dataset, data_dir, mnist_dir, n_digits, seed),
    yielding dicts with 'video' (C, T, H, W) in [-0.5, 0.5]."""
    if tcfg.dataset == 'mnist':
        digits, labels, source = mnist_digits(tcfg.mnist_dir or None, train)
        print(f"Moving MNIST from {source}")
        # the digits' classes are a 'label', for class-conditional priors (GPTConfig.cond_dim=10)
        # Training draws a fresh video for every item (index space 2^62) unless dataset_size fixes a set; held-out
        # sets are fixed (10,000 videos, as many as the standard test file) so that scores are comparable.
        size = tcfg.dataset_size or (FRESH if train else 10_000)
        return MovingMNIST(digits, n_frames=n_frames, n_digits=tcfg.n_digits, seed=tcfg.seed + (not train),
                           labels=labels, length=size)
    if tcfg.dataset in ('bair', 'folder') and not tcfg.data_dir:  # never scan the current folder by accident
        raise ValueError(f"--dataset {tcfg.dataset} needs --data-dir DIR: "
                         f"{'the folder data.py bair wrote' if tcfg.dataset == 'bair' else 'a folder of videos'}")
    if tcfg.dataset == 'bair':
        return BAIR(tcfg.data_dir, 'train' if train else 'val', n_frames=n_frames, train=train)
    if tcfg.dataset == 'folder':
        return VideoFolder(tcfg.data_dir, n_frames=n_frames, resolution=resolution, train=train)
    raise ValueError(f"unknown dataset {tcfg.dataset!r}: choose mnist, bair or folder")


def sample_inputs(args, ckpt, vcfg):
    """`videogpt.py sample`'s inputs, (videos (n, C, T, H, W), frames, cond, n_latent_frames), from its flags --from,
    --frames-from, --actions, --labels and --frames; ckpt: the prior's checkpoint, vcfg: its VQ-VAE's VQVAEConfig.
    A flag that does not apply to this prior, or a file that is not there, is an error: never ignored or replaced."""
    from videogpt import GPTConfig  # videogpt imports data: not at the top
    gcfg, T, d = GPTConfig(**ckpt['config']), vcfg.sequence_length, vcfg.downsample[0]
    most = MAX_VALUES // (args.n * vcfg.in_channels * vcfg.resolution ** 2) // d * d  # whole latent frames that fit
    if args.frames and (args.frames % d or not T <= args.frames <= most or args.task):
        sys.exit(f"--frames {args.frames}: give a multiple of {d} (time downsampling) from {T} to {most} (4 GiB of "
                 "frames for this --n), and no --task")
    source, batch = args.from_ or args.frames_from, {}
    split = source in ('val', 'train') and not os.path.isfile(source)  # a file of that name wins
    if gcfg.n_cond_frames and not source:
        sys.exit("this prior is frame-conditioned: pass --frames-from val|train|VIDEO_FILE")
    if args.frames_from and (args.from_ or not gcfg.n_cond_frames):
        sys.exit(f"drop --frames-from: {'--from gives the frames' if args.from_ else 'this prior takes no frames'}")
    if source and not split and not os.path.isfile(source):
        sys.exit(f"{source}: no such video file; pass a video file, or val / train (a split of the prior's data)")
    if not split and (args.dataset or args.data_dir or args.mnist_dir):
        sys.exit("--dataset, --data-dir and --mnist-dir pick the videos of --from / --frames-from val|train: drop them")
    if split:  # the prior's training data unless overridden
        ds = held_out(args, ckpt, T, vcfg.resolution, train=source == 'train')
        check_count(args.n, ds, f'the {source} split')
        batch = torch.utils.data.default_collate([ds[i] for i in range(args.n)])
    elif source:
        clip = read_video(source, vcfg.resolution, vcfg.in_channels)  # (C, T', H, W)
        if args.from_ and clip.shape[1] < T:
            sys.exit(f"{source} has {clip.shape[1]} frames; the VQ-VAE encodes {T}")
        batch['video'] = clip[None, :, :T].expand(args.n, -1, -1, -1, -1)
    if gcfg.cond_dim and args.actions:
        try:  # allow_pickle=False: a .npy of objects would run code
            actions = torch.as_tensor(np.load(args.actions, allow_pickle=False), dtype=torch.float32)
        except (ValueError, TypeError, OSError) as e:
            sys.exit(f"--actions {args.actions} is not a .npy of numbers ({str(e).splitlines()[0]}): np.save a float "
                     "array (T, 4) or (n, T, 4)")
        batch['actions'] = actions.expand(args.n, *actions.shape) if actions.ndim == 2 else actions
    if gcfg.cond_dim and args.labels:  # '3,7': a video of a 3 and a 7
        labels = [s.split(',') for s in args.labels]
        if not all(c.isdigit() for video in labels for c in video) or len({len(video) for video in labels}) > 1:
            sys.exit(f"--labels {' '.join(args.labels)}: give each video's classes as numbers joined by commas, as "
                     "many for every video: --labels 3 7 (one digit each) or --labels 3,7 1,2 (two each)")
        labels = torch.tensor([list(map(int, video)) for video in labels]).repeat(args.n, 1)[:args.n]  # (n, k), cycled
        batch['label'] = labels[:, 0] if labels.shape[1] == 1 else labels
    if gcfg.cond_dim and not gcfg.cond_dropout and not {'actions', 'label'} & set(batch):
        sys.exit("this prior is vector-conditioned: pass --actions FILE.npy, or --labels for class labels")
    if not gcfg.cond_dim and (args.actions or args.labels):  # else they would be ignored without a word
        sys.exit("this prior has no vector conditioning: drop --actions and --labels")
    return (batch.get('video'), *gpt_inputs(gcfg, batch, null=True), args.frames // d if args.frames else None)


def check_count(n, dataset, what):
    """Raise unless dataset holds at least n videos (the flag --n): fewer would be scored or shown as n."""
    if len(dataset) < n:
        raise ValueError(f"--n {n}: {what} holds {len(dataset)} videos; pass --n {len(dataset)} or fewer")


def eval_inputs(args, vcfg, predict):
    """`videogpt.py eval`'s files and data, checked before any scoring: (held-out videos, videos to predict if predict,
    the I3D network of --i3d or None); vcfg: the VQ-VAE's VQVAEConfig."""
    check_writable(args.json, '--json')
    check_eval_files(args.json, args.json[:-len('.json')] + '.gif')
    try:
        i3d = torch.jit.load(args.i3d, map_location='cpu').eval() if args.i3d else None
    except Exception as e:  # a state_dict, a text file: torch raises many types
        raise ValueError(f"--i3d {args.i3d} is not a TorchScript network ({type(e).__name__}): pass an I3D saved by "
                         "torch.jit.save (see videogpt.fvd)") from e
    ckpt, T = load_checkpoint(args.gpt or args.vqvae), args.context + args.future  # the prior's data: labels, actions
    held, ds = held_out(args, ckpt, vcfg.sequence_length, vcfg.resolution), None
    if predict:
        ds = (load_moving_mnist_test(args.test_seq, md5=None, n_context=args.context) if args.test_seq else
              held_out(args, ckpt, T, vcfg.resolution))
        if ds[0]['video'].shape[1] < T:
            raise ValueError(f"the held-out videos have {ds[0]['video'].shape[1]} frames, fewer than --context + "
                             "--future")
    for what, videos in (('the held-out set', held), (args.test_seq or 'the held-out set', ds)):
        if videos is not None:  # ds: None without prediction
            check_count(args.n, videos, what)
    return held, ds, i3d


def held_out(args, ckpt, n_frames, resolution, train=False):
    """A split (held-out unless train) of a checkpoint's training data; --dataset, --data-dir, --mnist-dir override."""
    from videogpt import TrainConfig
    given = {k: getattr(args, k) for k in ('dataset', 'data_dir', 'mnist_dir') if getattr(args, k)}
    return make_dataset(TrainConfig(**dict(ckpt.get('train_config', {}), **given)), n_frames, resolution, train)


def gpt_inputs(gcfg, batch, null=False):
    """(frames, cond) for the prior from a batch: the clip's first frames, its actions or label (gcfg: a GPTConfig);
    null: without either, cond None (the null condition of a prior trained with cond_dropout), else an error."""
    frames = batch['video'][:, :, :gcfg.n_cond_frames] if gcfg.n_cond_frames else None
    if gcfg.cond_dim and not (null and gcfg.cond_dropout) and not {'actions', 'label'} & set(batch):
        raise ValueError(f"the prior is vector-conditioned (cond_dim={gcfg.cond_dim}) but the items hold no 'actions' "
                         "or 'label': use BAIR, class folders, Moving MNIST with labels, or --cond-dim 0")
    return frames, (batch.get('actions', batch.get('label')) if gcfg.cond_dim else None)  # actions win over a label


# ------------------------------------------------------------------------------------------------------------------
# Batches that --resume can replay exactly


class SeededItems(Dataset):
    """Wraps a dataset so that item (idx, seed) is drawn with the torch RNG seeded by `seed`.

    Datasets draw random windows with torch's global RNG; seeding it per item makes batch s a pure function of
    (seed, s, rank), whatever the number of workers, which is what lets --resume continue bit for bit.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        idx, seed = key
        torch.manual_seed(seed)
        return self.dataset[idx]


def batches(dataset, tcfg, start_step, rank=0):
    """Endless batches from step start_step on: batch s holds indices drawn from a generator seeded by (seed, s).

    tcfg: a videogpt.TrainConfig (seed, batch_size, num_workers); rank: this process's rank under torchrun.
    """
    def keys():
        for step in range(start_step, 1 << 62):
            g = torch.Generator().manual_seed(tcfg.seed * 1_000_003 + step * 1009 + rank)
            idx = torch.randint(len(dataset), (tcfg.batch_size,), generator=g).tolist()
            seeds = torch.randint(1 << 62, (tcfg.batch_size,), generator=g).tolist()
            yield list(zip(idx, seeds))
    # The loader's own generator: making its iterator draws a seed, which from the global RNG would shift every
    # later dropout and code-restart draw by one after a resume.
    return iter(torch.utils.data.DataLoader(SeededItems(dataset), batch_sampler=keys(), num_workers=tcfg.num_workers,
                                            pin_memory=torch.cuda.is_available(),
                                            persistent_workers=tcfg.num_workers > 0,
                                            generator=torch.Generator().manual_seed(tcfg.seed + rank)))


# ------------------------------------------------------------------------------------------------------------------
# Codes: a dataset encoded once by a frozen VQ-VAE, so that the prior never runs it


def random_windows(dataset):
    """Whether items are drawn at random (training crops and windows): item 0 differs under two torch seeds."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        a = dataset[0]['video']
        torch.manual_seed(1)
        return not torch.equal(a, dataset[0]['video'])


class CodesDataset(Dataset):
    """Precomputed codes (N, t, h, w) plus the dataset's other fields; with keep_video, 'video' holds the
    conditioning frames: those stored with the codes (random-window datasets), else read from the dataset."""

    def __init__(self, dataset, encoded, keep_video):
        if keep_video and 'frames' not in encoded and random_windows(dataset):
            raise ValueError("the dataset draws random windows, so frames read again would not match the encoded "
                             "window: encode with encode_dataset(..., n_frames=N) to store them with the codes")
        self.dataset, self.encoded, self.keep_video = dataset, encoded, keep_video

    def __len__(self):
        return len(self.encoded['codes'])

    def __getitem__(self, idx):
        item = {k: v[idx] for k, v in self.encoded.items() if k != 'frames'}
        item['codes'] = item['codes'].long()
        if self.keep_video and 'frames' in self.encoded:
            item['video'] = self.encoded['frames'][idx].float() / 255 - 0.5  # uint8 frames, as they were decoded
        elif self.keep_video:
            item['video'] = self.dataset[idx]['video']
        return item


@torch.no_grad()
def encode_dataset(vqvae, dataset, path, batch_size=32, n_frames=0):
    """Encode every video once into a file of int16 codes (N, t, h, w) plus the items' other fields (actions,
    labels), written atomically; a second call loads it. For a dataset of random windows, n_frames > 0 also stores
    the first n_frames frames of each encoded window (uint8), so that frame conditioning sees that same window."""
    if len(dataset) >= FRESH:  # Moving MNIST's endless training set: no file could hold it
        raise ValueError("encode_dataset (--codes-file) encodes a fixed set: for Moving MNIST pass --dataset-size N "
                         "(e.g. 20000)")
    # The file remembers which codebook made it: codes of a retrained VQ-VAE must not be served from a stale file.
    fingerprint = vqvae.codebook.embeddings.double().sum().item()
    n_frames = n_frames if n_frames and random_windows(dataset) else 0
    if os.path.exists(path):
        try:
            encoded = torch.load(path, weights_only=True)
            stamp = encoded.pop('fingerprint').item(), encoded.pop('n_frames', 0)
        except Exception as e:  # a checkpoint, a text file, a folder: never written over
            raise ValueError(f"{path} is not a codes file ({type(e).__name__}); it is left as it is: pass a new "
                             "--codes-file name, e.g. codes.pt in the run's folder") from e
        if stamp == (fingerprint, n_frames) and set(dataset[0]) - {'video'} <= set(encoded):
            return encoded
        print(f"{path} was made by another VQ-VAE, for other frames or without the items' labels: encoding again")
    device = next(vqvae.parameters()).device
    out = {}
    for b in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        video = b.pop('video')
        b['codes'] = vqvae.encode(video.to(device)).cpu().to(torch.int16)  # K <= 32768 fits int16
        if n_frames:  # frames come from uint8 files: x * 255 + 127.5 recovers them exactly
            b['frames'] = ((video[:, :, :n_frames] + 0.5) * 255).round().to(torch.uint8)
        for k, v in b.items():
            out.setdefault(k, []).append(v)
    out = {k: torch.cat(v) for k, v in out.items()}
    stamp = dict(fingerprint=torch.tensor(fingerprint, dtype=torch.float64), n_frames=n_frames)
    atomic_write(path, lambda tmp: torch.save(dict(stamp, **out), tmp))
    return out


# ------------------------------------------------------------------------------------------------------------------
# Checkpoint files: videogpt.py builds the models; these write, check, shrink and find the files (its public names too)


def save_checkpoint(path, **state):
    """Write atomically: a crash mid-write leaves the previous checkpoint whole (temp file, then rename)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path, kind=None):
    """A checkpoint dict of this project's, of `kind` ('vqvae' or 'gpt') if given; anything else is a clear error.
    path: a file's name, or a file object (checked_files' bytes)."""
    if isinstance(path, (str, os.PathLike)) and not os.path.isfile(path):  # a folder in its place too
        raise FileNotFoundError(f"no checkpoint at {path}: train one first, or check --out-dir / --vqvae")
    try:  # weights_only: a checkpoint holds tensors, numbers, strings and dicts; loading never runs arbitrary code
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # a text file, a truncated file, a pickle with code in it: torch raises many types
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}): pass a train-* ckpt.pt") from e
    if not isinstance(ckpt, dict) or ckpt.get('kind') not in ('vqvae', 'gpt') or 'config' not in ckpt:
        raise ValueError(f"{path} is not a VideoGPT checkpoint: pass a ckpt.pt written by train-vqvae or train-gpt")
    if kind and ckpt['kind'] != kind:
        raise ValueError(f"{path} holds a {ckpt['kind']!r} model where a {kind!r} one is needed: use train-{kind}'s")
    return ckpt


def export_weights(ckpt_path, out_path, vqvae_rel=None):
    """A checkpoint's model in fp16, no optimizer (1/3 the size); vqvae_rel: a prior's VQ-VAE path from out_path."""
    ckpt = load_checkpoint(ckpt_path)
    out = dict(kind=ckpt['kind'], config=ckpt['config'], train_config=ckpt.get('train_config', {}),
               model={k: v.half() if v.is_floating_point() else v for k, v in ckpt['model'].items()})
    if ckpt['kind'] == 'gpt':
        out.update(vqvae=ckpt['vqvae'], vqvae_rel=vqvae_rel or ckpt.get('vqvae_rel', ''))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    save_checkpoint(out_path, **out)


@torch.no_grad()
def init_prior(gpt, path):
    """gpt (a VideoGPT) with the weights of the prior at path, of the same sizes; an unconditional prior's norms become
    gpt's conditional ones with the condition ignored at first: a class-conditional prior fine-tuned from it."""
    ckpt, cfg = load_checkpoint(path, 'gpt'), asdict(gpt.config)
    saved = dict(asdict(type(gpt.config)(**ckpt['config'])), cond_dropout=cfg['cond_dropout'])
    saved['cond_dim'] = saved['cond_dim'] or cfg['cond_dim']  # conditioning may be added to an unconditional prior
    if not (saved['codebook'] and cfg['codebook']):  # a codebook unknown on either side: train_gpt checks it
        saved['codebook'] = cfg['codebook']
    differ = ', '.join(f"{k}={v}" for k, v in saved.items() if v != cfg[k])
    if differ:
        raise ValueError(f"{path} is a prior with {differ}: start from one with this prior's settings (or cond_dim=0)")
    state = dict(ckpt['model'])
    for name, m in gpt.named_modules():  # CondLayerNorm: a plain norm's weight is gain's bias, its bias is bias's
        if getattr(m, 'cond_dim', 0) and f'{name}.weight' in state:
            state.update({f'{name}.gain.bias': state.pop(f'{name}.weight'), f'{name}.gain.weight': m.gain.weight,
                          f'{name}.bias.bias': state.pop(f'{name}.bias'), f'{name}.bias.weight': m.bias.weight})
    gpt.load_state_dict(state)
    return gpt


def find_vqvae(gpt_path, vqvae_path=''):
    """vqvae_path, or the prior's VQ-VAE checkpoint: relative to its folder first (a moved run), then absolute."""
    if vqvae_path:
        return vqvae_path
    ckpt = load_checkpoint(gpt_path, 'gpt')
    rel = os.path.join(os.path.dirname(gpt_path), ckpt.get('vqvae_rel', ''))
    for path in (rel, ckpt['vqvae']):
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"the prior's VQ-VAE is neither at {rel} nor at {ckpt['vqvae']}: pass --vqvae PATH")


# ------------------------------------------------------------------------------------------------------------------
# The models' input checks, every error naming the fix: videogpt.py's models call them in one line (its names too)

def need(ok, message):
    """Raise ValueError(message) unless ok: a check in one line, its message naming the fix."""
    if not ok:
        raise ValueError(message)


def check_fields(cfg, low, high, *names):
    """Raise naming the flag unless low <= value < high for each named field of the dataclass cfg (NaN fails too)."""
    for name in names:
        v = getattr(cfg, name)
        need(low <= v < high, f"{name}={v}: it must be at least {low}{f' and below {high}' if high < math.inf else ''} "
                              f"(--{name.replace('_', '-')})")


def check_vqvae_config(cfg):
    """Raise, naming the field, unless a VQVAEConfig's values build a model."""
    need(cfg.padding in ('zeros', 'reflect') and cfg.time_downsample in ('early', 'late'), f"padding="
         f"{cfg.padding!r}, time_downsample={cfg.time_downsample!r}: use 'zeros' or 'reflect', 'early' or 'late'")
    check_fields(cfg, 1, math.inf, 'in_channels', 'sequence_length', 'resolution', 'n_head', 'embedding_dim')
    check_fields(cfg, 1, 2 ** 15 + 1, 'n_codes')  # codes files store int16
    check_fields(cfg, 0, math.inf, 'n_res_layers', 'beta', 'dead_code_threshold')
    check_fields(cfg, 0, 1, 'ema_decay')
    check_fields(cfg, 0, math.inf, 'gan_weight', 'lecam_weight', 'gan_warmup', 'perceptual_weight')
    need(cfg.gan_weight or not cfg.lecam_weight, f"lecam_weight={cfg.lecam_weight} regularises the GAN's "
         "discriminator: set gan_weight > 0 too")
    need(cfg.n_hiddens >= 2 and cfg.n_hiddens % cfg.n_head == 0, f"n_hiddens={cfg.n_hiddens} must be at least "
         f"2 (the residual blocks halve it) and divisible by n_head={cfg.n_head}")
    for d, n, axis in zip(cfg.downsample, (cfg.sequence_length, cfg.resolution, cfg.resolution), 'THW'):
        if d < 1 or d & (d - 1):
            raise ValueError(f"downsample factors must be powers of 2, got {cfg.downsample}")
        if n % d:
            raise ValueError(f"{axis}={n} is not divisible by its downsample factor {d}: use multiples of {d}")
    need(cfg.padding == 'zeros' or min(cfg.latent_shape) >= 2, f"padding='reflect' reflects a neighbour: every "
         f"latent axis needs 2 or more, got {cfg.latent_shape}; use padding='zeros' or downsample less")


def check_prior_fits(gcfg, fitted):
    """Raise unless the prior's codes, and its frames if any, are the VQ-VAE's: fitted = fit_prior(gcfg, vcfg)."""
    keys = ('n_codes', 'latent_shape') + ('frame_channels', 'frame_size') * bool(gcfg.n_cond_frames)
    expects, makes = (', '.join(f'{k}={getattr(c, k)}' for k in keys) for c in (gcfg, fitted))
    if expects != makes:
        raise ValueError(f"the prior expects {expects} but the VQ-VAE makes {makes}: use fit_prior(gcfg, vcfg)")


def codebook_digest(embeddings):
    """16 hex digits of sha256 over a VQ-VAE's codebook (K, E) rounded to fp16, so that its exported fp16 weights keep
    them: a prior records the codebook it learned (GPTConfig.codebook), and is refused beside another one."""
    return hashlib.sha256(embeddings.detach().cpu().half().numpy().tobytes()).hexdigest()[:16]


def check_codebook(gc, embeddings):
    """Raise unless a prior (GPTConfig gc) learned the codes of this codebook; priors saved without a digest pass."""
    have = codebook_digest(embeddings)
    need(gc.codebook in ('', have), f"the prior learned the codes of another VQ-VAE (codebook {gc.codebook}, this one "
                                    f"{have}): its samples would decode to noise. Pass the VQ-VAE it was trained with")


def check_pair(vqvae, gpt):
    """vqvae.config, after checking that gpt learned vqvae's codes (check_codebook)."""
    check_codebook(gpt.config, vqvae.codebook.embeddings)
    return vqvae.config


def check_gpt_config(cfg, task_mask):
    """Raise, naming the field, unless a GPTConfig's values build a prior; task_mask: videogpt's, checks its tasks."""
    check_fields(cfg, 1, math.inf, 'n_codes', 'n_layer', 'n_head', 'n_embd', 'frame_channels', 'frame_width')
    check_fields(cfg, 0, math.inf, 'n_cond_frames', 'cond_dim')
    check_fields(cfg, 0, 1, 'dropout', 'attn_dropout')
    if cfg.causal and cfg.tasks != ('uncond',):
        raise ValueError(f"tasks={cfg.tasks} need a masked prior: set causal=False (causal ones learn prefixes)")
    if cfg.n_embd % cfg.n_head:
        raise ValueError(f"n_embd={cfg.n_embd} must be divisible by n_head={cfg.n_head}")
    if cfg.cond_dropout and not (cfg.cond_dim and 0 < cfg.cond_dropout <= 1):
        raise ValueError(f"cond_dropout={cfg.cond_dropout} needs cond_dim > 0 and a value in (0, 1], e.g. 0.1")
    if cfg.n_cond_frames and cfg.frame_size % 8:
        raise ValueError(f"frame_size={cfg.frame_size} must be a multiple of 8 (the frame encoder halves it 3x)")
    for task in cfg.tasks:  # raises for a task unknown or impossible on this grid
        task_mask(task, cfg.latent_shape)


def check_train_config(cfg):
    """Raise, naming the flag, unless a TrainConfig's values can train."""
    check_fields(cfg, 1, math.inf, 'steps', 'batch_size', 'log_every', 'sample_every', 'ckpt_every', 'n_digits')
    check_fields(cfg, 0, math.inf, 'warmup', 'num_workers', 'weight_decay', 'dataset_size')
    check_fields(cfg, 0, 2 ** 32, 'seed')  # numpy's generators take no negative seed; loader seeds mix in steps
    need(cfg.lr > 0 and cfg.grad_clip > 0, f"lr and grad_clip must be > 0, got {cfg.lr}, {cfg.grad_clip}")


def check_pixels(x, what='video'):
    """Raise a clear error unless x is a non-empty float tensor of finite values in [-0.5, 0.5]."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"{what} must be a float tensor in [-0.5, 0.5], got {getattr(x, 'dtype', type(x))}: for "
                        "uint8 frames use x.float() / 255 - 0.5")
    if not x.numel():
        raise ValueError(f"{what} is empty (shape {tuple(x.shape)}): pass at least one video")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} holds NaN or inf values: check the data pipeline that made it")
    lo, hi = torch.aminmax(x.detach())
    if lo < -0.501 or hi > 0.501:  # a little slack for resampling overshoot
        raise ValueError(f"{what} values must lie in [-0.5, 0.5], got [{lo:.3f}, {hi:.3f}]: "
                         "for uint8 frames use x / 255 - 0.5, for [-1, 1] data use x / 2")


def check_video(cfg, x):
    """x, after checking its shape, channels and sizes against VQVAEConfig cfg and its values (check_pixels)."""
    check_pixels(x)
    if x.ndim != 5:
        raise ValueError(f"video must be (B, C, T, H, W), got {tuple(x.shape)}: use x[None] or x[:, None] (grey)")
    if x.shape[1] != cfg.in_channels:
        raise ValueError(f"video has {x.shape[1]} channels but the model was built for {cfg.in_channels}: "
                         f"set VQVAEConfig(in_channels={x.shape[1]}) or convert the video; channels go on axis 1")
    T, H, W = x.shape[2:]  # the config's sizes are divisible by the downsample factors (VQVAEConfig checks)
    if (T, H, W) != (cfg.sequence_length, cfg.resolution, cfg.resolution):  # the position embeddings' size
        raise ValueError(f"video is {T}x{H}x{W} but the model was built for {cfg.sequence_length}x{cfg.resolution}"
                         f"x{cfg.resolution}: crop or resize the video, or build a VQVAEConfig for this size")
    return x


def check_codes(codes, latent_shape, n_codes, hint=""):
    """Raise a clear error unless codes is an integer tensor (B, *latent_shape) with values in [0, n_codes)."""
    if not torch.is_tensor(codes) or codes.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"codes must be an int64 tensor from VQVAE.encode, got {getattr(codes, 'dtype', type(codes))}")
    if codes.ndim != 4 or tuple(codes.shape[1:]) != tuple(latent_shape) or not len(codes):
        raise ValueError(f"codes must be (B, {', '.join(map(str, latent_shape))}) with B >= 1, got "
                         f"{tuple(codes.shape)}{hint}")
    if codes.numel() and (codes.min() < 0 or codes.max() >= n_codes):
        raise ValueError(f"codes must lie in [0, {n_codes}), got [{codes.min()}, {codes.max()}]{hint}")


def check_prior_inputs(gpt, codes=None, frames=None, cond=None, batch=None):
    """The prior's inputs checked; returns frames and cond (a float (B, cond_dim) vector) in the weights' dtype, on
    their device: callers may pass CPU tensors."""
    cfg, weights = gpt.config, gpt.sos
    if codes is not None:  # masked decoding may pass the [MASK] id K among the codes
        check_codes(codes, cfg.latent_shape, cfg.n_codes + (not cfg.causal), ": build the prior with GPTConfig("
                    "n_codes=vqvae.config.n_codes, latent_shape=vqvae.config.latent_shape)")
        batch = codes.shape[0]
    if cfg.n_cond_frames:
        want = (batch, cfg.frame_channels, cfg.n_cond_frames, cfg.frame_size, cfg.frame_size)
        if frames is None or tuple(frames.shape) != want:
            raise ValueError(f"this prior is frame-conditioned: pass frames as a float tensor of shape {want} "
                             f"in [-0.5, 0.5], got {None if frames is None else tuple(frames.shape)}")
        check_pixels(frames, 'frames')
        frames = frames.to(weights)
    elif frames is not None:
        raise ValueError("frames were given but n_cond_frames=0: build the prior with GPTConfig(n_cond_frames > 0)")
    if cfg.cond_dim:
        if cond is None and cfg.cond_dropout:  # trained with the null condition: p(x) without cond
            cond = torch.zeros(batch, cfg.cond_dim, device=weights.device)
        if cond is None:
            raise ValueError(f"vector-conditioned prior: pass cond ({batch}, {cfg.cond_dim}) or int labels (B,) or "
                             "(B, k)")
        if not cond.is_floating_point():  # class labels (B,) -> one-hot; (B, k), k per video -> counts per class
            k = cond.shape[1] if cond.ndim == 2 else 1  # k = cond_dim: an int one-hot vector? ambiguous, refused
            if cond.shape[:1] != (batch,) or cond.ndim > 2 or k >= cfg.cond_dim or cond.min() < 0 or \
                    cond.max() >= cfg.cond_dim:
                raise ValueError(f"class labels must be ({batch},) or ({batch}, k < {cfg.cond_dim}) in [0, "
                                 f"{cfg.cond_dim}), got {tuple(cond.shape)}: {cond.flatten()[:8].tolist()}; pass "
                                 "one-hot or count vectors as floats")
            cond = F.one_hot(cond.long().view(batch, -1), cfg.cond_dim).sum(1).float()
        cond = cond.reshape(cond.shape[0], -1)  # BAIR's (B, T, 4) actions are flattened to (B, 4T)
        if cond.shape != (batch, cfg.cond_dim):
            raise ValueError(f"cond must be ({batch}, {cfg.cond_dim}), got {tuple(cond.shape)}: set "
                             "GPTConfig(cond_dim=) to its size")
        if not torch.isfinite(cond).all():
            raise ValueError("cond holds NaN or inf values: check the actions or labels it came from")
        cond = cond.to(weights)
    elif cond is not None:
        raise ValueError("cond was given but GPTConfig.cond_dim is 0: build the prior with cond_dim > 0")
    return frames, cond


def check_scored_videos(video, cond, batch_size, vqvae, gpt=None):
    """Raise unless evaluate() can score video (N, C, T, H, W) in [-0.5, 0.5] in batches, cond None or one per video,
    and gpt, if any, learned vqvae's codes."""
    check_pixels(video)
    if gpt is not None:
        check_pair(vqvae, gpt)
    need(batch_size >= 1 and (cond is None or len(cond) == len(video)), f"batch_size={batch_size}, {len(video)} videos"
         f" and {'no' if cond is None else len(cond)} cond: batch_size >= 1 and one cond (label, actions) per video")


def check_knobs(cfg=None, temperature=1.0, top_k=None, top_p=None, steps=None, guidance=1.0, return_logits=False):
    """Raise unless the sampling options are valid and, given the prior's GPTConfig cfg, apply to its kind of prior."""
    need(temperature >= 0 and math.isfinite(temperature) and (top_k is None or top_k >= 1) and
         (top_p is None or 0 < top_p <= 1), f"temperature={temperature}, top_k={top_k}, top_p={top_p}: use "
         "temperature >= 0 (0: greedy), top_k >= 1 and top_p in (0, 1], or None to switch a filter off")
    if cfg is None:
        return
    need(not cfg.causal or steps is None, "steps counts the passes of masked decoding; a causal prior takes one step "
                                          "per token: drop it")
    need(cfg.causal or steps is None or isinstance(steps, int) and 1 <= steps <= cfg.block_size, f"steps must be a "
         f"positive integer, at most the {cfg.block_size} tokens (12 is MaskGIT's choice), got {steps!r}")
    need(cfg.causal or (top_k, top_p, return_logits, guidance) == (None, None, False, 1.0), "top_k, top_p, "
         "return_logits, guidance: causal priors only; a masked prior decodes by confidence (sample_masked): drop them")
    need(guidance == 1.0 or cfg.cond_dropout and math.isfinite(guidance), f"guidance={guidance} needs a finite value "
         "and the null condition learned: train the prior with cond_dropout=0.1")


def check_sampling_inputs(gpt, n, frames, cond, given, given_mask, guidance=1.0):
    """check_prior_inputs' frames and cond for n >= 1 samples, then given (n, L) int64 and given_mask (n, L) bool, or
    Nones (the sampling options: check_knobs)."""
    cfg, shape = gpt.config, gpt.config.latent_shape
    need(isinstance(n, int) and n >= 1, f"n={n!r}: sample at least one video (an int n >= 1)")
    need(guidance == 1.0 or cond is not None, f"guidance={guidance} leans towards a condition: pass cond (labels or "
         "actions; the sample command's --labels or --actions)")
    frames, cond = check_prior_inputs(gpt, None, frames, cond, batch=n)
    if given is None and given_mask is None:
        return frames, cond, None, None
    if given is None or given_mask is None:
        raise ValueError("pass both given (n, t, h, w) codes (VQVAE.encode) and given_mask (task_mask('fp', ...))")
    check_codes(given, shape, cfg.n_codes, ": given holds a video's codes from VQVAE.encode")
    if given.shape[0] != n:
        raise ValueError(f"given holds {given.shape[0]} code grids for n={n} samples: pass one per sample")
    if given_mask.dtype != torch.bool or given_mask.shape not in ((*shape,), (n, *shape)):
        raise ValueError(f"given_mask must be a bool tensor {shape} or {(n, *shape)}, got {given_mask.dtype} "
                         f"{tuple(given_mask.shape)}: build one with task_mask(task, latent_shape)")
    given, given_mask = given.long().reshape(n, -1), given_mask.to(given.device).expand(n, *shape).reshape(n, -1)
    p = int(given_mask[0].sum())
    if cfg.causal and not (given_mask[:, :p].all() and not given_mask[:, p:].any()):
        raise ValueError("causal priors continue a shared raster-order prefix only; else GPTConfig(causal=False)")
    return frames, cond, given, given_mask


def check_prediction(vc, gc, T0, n_future):
    """Raise unless T0 context frames reach the prior (GPTConfig gc) via its VQ-VAE (VQVAEConfig vc); n_future > 0."""
    t, d = vc.latent_shape[0], vc.downsample[0]
    least = gc.n_cond_frames or d  # its conditioning frames, or one whole latent frame: less would reach it as nothing
    need(n_future >= 1 and min(T0, (t - 1) * d) >= least, f"{T0} context frames and n_future={n_future}: give at least "
         f"1 of each, and at least {least} context frames: " + (f"n_cond_frames={least} for this frame-conditioned "
         f"prior" if gc.n_cond_frames else f"one latent frame (the VQ-VAE downsamples time by {d})"))


PERCEPTUAL = ("perceptual_weight > 0 and --perceptual-net FILE go together: no pretrained network ships here (a "
              "TorchScript feature network of yours, like fvd's I3D)")

# The most video values (float32) a command holds in one set: 4 GiB, and it holds two or three sets (real, decoded,
# predicted). --n, --frames, --context and --future are bounded by it, each in its error message.
MAX_VALUES = 2 ** 30


def strict_bool(text):
    """A boolean flag's value: true/false, yes/no or 1/0; anything else is an error, so that a typo never reads as
    false (argparse's type for videogpt.py's boolean config fields)."""
    if text.lower() not in ('true', 'false', 'yes', 'no', '1', '0'):
        raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: use true or false")
    return text.lower() in ('true', 'yes', '1')


def check_eval_args(p, args, load_model):
    """`eval`'s flags and files, every one checked before any scoring: (vqvae, gpt or None, held-out videos, videos to
    predict or None, I3D network or None); load_model: videogpt's."""
    check_paths(args, files=('i3d',), folders=('data_dir', 'mnist_dir'))
    vqvae, gpt = load_model(args.vqvae, 'vqvae'), load_model(args.gpt, 'gpt') if args.gpt else None
    if gpt is not None:  # a file mismatch (exit 1), before any work
        check_pair(vqvae, gpt)
    vc, gc, pixels = vqvae.config, gpt and gpt.config, vqvae.config.in_channels * vqvae.config.resolution ** 2
    try:  # a flag's value: a usage error
        need(args.json.endswith('.json'), f"--json {args.json}: name a .json file (the predictions go beside, .gif)")
        check_fields(args, 1, math.inf, 'batch_size')
        check_fields(args, 0, 2 ** 32, 'seed')
        check_fields(args, 1, MAX_VALUES // (pixels * vc.sequence_length) + 1, 'n')
        check_fields(args, 1, MAX_VALUES // (pixels * args.n) + 1, 'context')
        check_fields(args, 0, MAX_VALUES // (pixels * args.n) - args.context + 1, 'future')
        need(gc or not (args.test_seq or args.top_k or args.steps), "--test-seq, --top-k, --steps: add --gpt")
        need(not args.i3d or args.n >= 2, "--i3d: FVD compares two sets of --n 2 or more videos (hundreds for a score)")
        need(not args.test_seq or args.future and (not gc.cond_dim or gc.cond_dropout) and
             (vc.in_channels, vc.resolution) == (1, 64), "--test-seq holds Moving MNIST's 64x64 grey videos without "
             "labels: give --future >= 1, a VQ-VAE of 1 channel at 64x64 and a prior with cond_dim=0 (or one trained "
             "with cond_dropout, which predicts without a condition)")
        check_knobs(gc, args.temperature, args.top_k, steps=args.steps)
        need(gc or not (args.seed or args.temperature != 1 or (args.context, args.future) != (10, 10)),
             "--seed, --temperature, --context, --future set frame prediction, which needs a prior: add --gpt")
        if gc and args.future:
            check_prediction(vc, gc, args.context, args.future)
    except ValueError as e:
        p.error(str(e))
    return (vqvae, gpt, *eval_inputs(args, vc, bool(gc and args.future)))  # the files and data: data errors


def check_sample_args(p, args):
    """`sample`'s flags, every one checked before sampling: (the prior's checkpoint, its VQ-VAE's VQVAEConfig)."""
    from videogpt import GPTConfig, VQVAEConfig, task_mask  # videogpt imports data: not at the top
    check_paths(args, files=('actions',), folders=('data_dir', 'mnist_dir'))
    args.vqvae = find_vqvae(args.gpt, args.vqvae)
    ckpt, vq_ckpt = load_checkpoint(args.gpt, 'gpt'), load_checkpoint(args.vqvae, 'vqvae')
    vc, gc = VQVAEConfig(**vq_ckpt['config']), GPTConfig(**ckpt['config'])
    check_codebook(gc, vq_ckpt['model']['codebook.embeddings'])  # a file mismatch (exit 1), before any sampling
    try:  # a flag's value: a usage error
        need(args.out.lower().endswith(('.gif', '.mp4', '.png')), f"--out {args.out}: write a .gif, .mp4 or .png")
        need(bool(args.task) == bool(args.from_), "--task and --from go together: --task fp --from clip.mp4 (or val)")
        need(args.n_given is None or args.task == 'fp', "--n-given: the latent frames --task fp gives; drop it")
        args.n_given = 1 if args.n_given is None else args.n_given
        task_mask(args.task or 'uncond', gc.latent_shape, args.n_given)  # a task this grid allows: K < t for fp
        check_fields(args, 1, MAX_VALUES // (vc.in_channels * vc.sequence_length * vc.resolution ** 2) + 1, 'n')
        check_fields(args, 0, 2 ** 32, 'seed')
        check_knobs(gc, args.temperature, args.top_k, args.top_p, args.steps, args.guidance)
    except ValueError as e:
        p.error(str(e))
    check_writable(args.out, '--out')
    return ckpt, vc


# ------------------------------------------------------------------------------------------------------------------
# The command line's files: inputs that must exist, outputs that must be writable and must not destroy inputs


def check_train_files(args, tcfg):
    """`train-*`'s files, before any training: its inputs exist (--perceptual-net a TorchScript network), its outputs
    can be written; tcfg: the TrainConfig the flags filled."""
    check_paths(args, files=('perceptual_net',), folders=('data_dir', 'mnist_dir'))
    try:  # a state_dict or a text file in its place: torch raises many types
        tcfg.perceptual_net and torch.jit.load(tcfg.perceptual_net)
    except Exception as e:
        raise ValueError(f"--perceptual-net {tcfg.perceptual_net} is not a TorchScript network ({type(e).__name__})")
    tcfg.init_from and load_checkpoint(tcfg.init_from, 'gpt')  # its sizes: init_prior, once the prior is built
    check_writable(tcfg.out_dir, '--out-dir', folder=True)
    check_writable(tcfg.codes_file, '--codes-file')


def check_demo_args(p, args):
    """`demo`'s flags (a usage error) and files, before any training."""
    try:
        check_fields(args, 1, math.inf, 'vqvae_steps', 'gpt_steps')
        need(args.vqvae_lr > 0, f"vqvae_lr={args.vqvae_lr}: it must be > 0 (--vqvae-lr)")
    except ValueError as e:
        p.error(str(e))
    check_paths(args, folders=('mnist_dir',))
    check_writable(args.out_dir, '--out-dir', folder=True)


def check_paths(args, files=(), folders=()):
    """Raise naming the flag when a file or folder flag of args (argparse) is given but names nothing of that kind."""
    for names, exists, what in ((files, os.path.isfile, 'file'), (folders, os.path.isdir, 'folder')):
        for name in names:
            if getattr(args, name, None) and not exists(getattr(args, name)):
                raise FileNotFoundError(f"--{name.replace('_', '-')} {getattr(args, name)}: no such {what}")


def check_writable(path, flag, folder=False):
    """Raise unless path can be written: a file in an existing folder, or (folder=True) a folder that exists or can be
    made; '' writes nothing. Probed with a nameless temporary file: permissions, read-only disks, files in the way."""
    if not path:
        return
    where = os.path.abspath(path) if folder else os.path.dirname(os.path.abspath(path))
    while folder and not os.path.exists(where):  # a folder to be made: its nearest existing parent must take it
        where = os.path.dirname(where)
    if not folder and os.path.isdir(path):
        raise IsADirectoryError(f"{flag} {path} is a folder: name a file")
    try:
        tempfile.TemporaryFile(dir=where).close()
    except OSError as e:
        raise OSError(f"{flag} {path}: cannot write in {where} ({e.strerror}): create that folder or pick another "
                      "place") from e


EVAL_MARK = 'written_by_videogpt_eval'  # a key of every JSON that eval writes: eval writes over no other file


def write_eval(args, scores, grid=None):
    """`eval`'s outputs: the scores printed as a table and written with its flags to --json; grid (real videos on the
    top row, predicted ones below) beside it, as a .gif."""
    print('\n'.join(f"{k:<24} {v:.4g}" if isinstance(v, float) else f"{k:<24} {v}" for k, v in scores.items()))
    info = {k: getattr(args, k) for k in 'vqvae gpt test_seq context future temperature top_k steps seed'.split()}
    write_json(args.json, {EVAL_MARK: True, **info, **scores})  # the mark: eval may write here again
    if grid is not None:  # after its JSON: a .gif is written only beside a JSON of eval's
        save_video_grid(grid, args.json[:-len('.json')] + '.gif', nrow=len(grid) // 2)
    print(f"wrote {args.json}")


def check_eval_files(json_path, gif_path):
    """Raise unless eval may write json_path (new, or a JSON holding EVAL_MARK) and gif_path (new, or beside one)."""
    ours = False
    with contextlib.suppress(OSError, ValueError):  # missing, unreadable or not JSON: not ours
        obj = json.loads(Path(json_path).read_text())
        ours = isinstance(obj, dict) and EVAL_MARK in obj
    for path in (json_path, gif_path):
        if os.path.lexists(path) and not ours:
            raise FileExistsError(f"{path} exists and is not from an eval run (no eval JSON holding {EVAL_MARK!r} is "
                                  "there): eval never writes over other files; pass another --json name")


# ------------------------------------------------------------------------------------------------------------------
# Visualisation


def save_video_grid(video, path=None, fps=4, nrow=None, mark=None):
    """Tile a batch (B, C, T, H, W) in [-0.5, 0.5] and return the uint8 grid; path=None only returns it.

    .gif/.mp4: an animation of (T, rows*H, nrow*W, 3), nrow videos per row (default ceil(sqrt(B))).
    .png: one still image (B*H, T*W, 3), one row per video and time running across the columns.
    mark: (B, T, H, W) or (T, H, W) bool; the edge of each True region is drawn in green (what a task was given).
    """
    v = ((torch.as_tensor(video).detach().cpu().float() + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    v = v.expand(-1, 3, -1, -1, -1).clone()  # grey -> RGB
    if mark is not None:
        m = torch.as_tensor(mark).cpu().float().expand(v.shape[0], *v.shape[2:]).flatten(0, 1)[:, None]  # (BT, 1, H, W)
        outside = F.max_pool2d(F.pad(1 - m, (1, 1, 1, 1), value=1.0), 3, stride=1)  # next to a pixel not marked
        edge = (m * outside).bool().view(v.shape[0], *v.shape[2:])                     # or to the frame's border
        v.permute(0, 2, 3, 4, 1)[edge] = torch.tensor([40, 220, 40], dtype=torch.uint8)  # (B, T, H, W, 3) view
    v = F.pad(v, (1, 1, 1, 1))  # a 2 px black gap between tiles
    suffix = Path(path).suffix.lower() if path else ''
    if suffix == '.png':
        grid = rearrange(v, 'b c t h w -> (b h) (t w) c').numpy()
    else:
        nrow = nrow or math.ceil(math.sqrt(len(v)))
        v = torch.cat([v, v.new_zeros(-len(v) % nrow, *v.shape[1:])])  # blank tiles fill the last row
        grid = rearrange(v, '(r n) c t h w -> t (r h) (n w) c', n=nrow).numpy()
    if path:
        import imageio.v3 as iio
        if suffix == '.gif':
            iio.imwrite(path, grid, duration=1000 / fps, loop=0)
        elif suffix == '.mp4':  # H.264 players want sizes divisible by 16: pad rather than let imageio resize
            iio.imwrite(path, np.pad(grid, ((0, 0), (0, -grid.shape[1] % 16), (0, -grid.shape[2] % 16), (0, 0))),
                        fps=fps)
        elif suffix == '.png':
            iio.imwrite(path, grid)
        else:
            raise ValueError(f'save_video_grid writes .gif, .mp4 or .png, not {path}')
    return grid


def plot_metrics(path, log):
    """The loss curve of a training log (rows with 'step' and 'loss') as a PNG."""
    # A Figure of its own, not pyplot: switching pyplot's backend here would stop a notebook's plots from showing.
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot([r['step'] for r in log], [r['loss'] for r in log])
    ax.set(xlabel='step', ylabel='loss', yscale='log')
    fig.tight_layout()
    fig.savefig(path, dpi=80)


# ------------------------------------------------------------------------------------------------------------------
# Command line: python data.py bair --tar bair_robot_pushing_dataset_v0.tar --out data/bair


if __name__ == '__main__':
    p = argparse.ArgumentParser(description='Prepare VideoGPT datasets.')
    sub = p.add_subparsers(dest='cmd', required=True)
    b = sub.add_parser('bair', help='convert the BAIR tar (downloading it with --download) into .npy files')
    b.add_argument('--tar', help='path to bair_robot_pushing_dataset_v0.tar')
    b.add_argument('--download', action='store_true', help=f'fetch the tar (30 GB) from {BAIR_URL} into --out')
    b.add_argument('--out', required=True, help='output directory of the converted dataset')
    b.add_argument('--n-val-files', type=int, default=1, help='train files held out for validation')
    args = p.parse_args()
    if not (args.tar or args.download):
        p.error('bair needs --tar PATH or --download')
    print(json.dumps(convert_bair(args.tar or download_bair(args.out), args.out, args.n_val_files)['splits']))


# ------------------------------------------------------------------------------------------------------------------
# Scores of videos (B, C, T, H, W) in [-0.5, 0.5], one value per video: videogpt.evaluate's and the benchmarks'

def psnr(a, b):
    """(B,) peak signal-to-noise ratio in dB; the peak-to-peak range is 1."""
    return 10 * torch.log10(1 / (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp(min=1e-10))


def ssim(a, b):
    """(B,) SSIM (Wang et al. 2004) per frame and channel, averaged; 11x11 Gaussian window (sigma 1.5) inside the
    frame, as scikit-image's structural_similarity(gaussian_weights=True, use_sample_covariance=False, data_range=1)."""
    if min(a.shape[-2:]) < 11:
        raise ValueError(f"SSIM's 11x11 window needs frames of at least 11x11 pixels, got {tuple(a.shape[-2:])}")
    g = torch.exp(-(torch.arange(11, dtype=torch.float64) - 5) ** 2 / (2 * 1.5 ** 2))
    g = (g / g.sum()).to(a.device)
    blur = lambda z: F.conv2d(F.conv2d(z, g.view(1, 1, 11, 1)), g.view(1, 1, 1, 11))  # separable, 'valid'
    x, y = (rearrange(v, 'B C T H W -> (B C T) 1 H W').double() + 0.5 for v in (a, b))  # to [0, 1], float64
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2  # keep the ratios stable where the means or contrasts are near zero
    s = (2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.mean((1, 2, 3)).view(a.shape[0], -1).mean(1).float()


def frechet_distance(feats_a, feats_b):
    """|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of Gaussians fitted to features (N, d), (M, d); float64."""
    a, b = feats_a.double(), feats_b.double()
    cov_a, cov_b = (torch.atleast_2d(torch.cov(x.T)) for x in (a, b))  # unbiased, as numpy's cov in FID code
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T  # rounding can make tiny eigenvalues negative
    tr_sqrt = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()  # symmetric, so no NaN
    return ((a.mean(0) - b.mean(0)).square().sum() + cov_a.trace() + cov_b.trace() - 2 * tr_sqrt).item()


@torch.no_grad()
def fvd(videos_a, videos_b, i3d, batch_size=16):
    """Frechet video distance of (N, C, T, H, W) in [-0.5, 0.5]; i3d: (B, 3, T, 224, 224) in [-1, 1] -> (B, 400)."""
    for videos in (videos_a, videos_b):
        check_pixels(videos, 'FVD video')
        need(videos.ndim == 5 and len(videos) >= 2 and videos.shape[1] in (1, 3), f"FVD videos must be (N, C, T, H, "
             f"W), N >= 2 per set (a covariance; hundreds for a stable score), C 1 or 3, got {tuple(videos.shape)}")
    device, features = next(iter(i3d.parameters()), torch.empty(0)).device, ([], [])
    for videos, out in zip((videos_a, videos_b), features):  # FVD: Unterthiner et al. 2018
        for v in videos.split(batch_size):
            x = F.interpolate(rearrange(v.float(), 'B C T H W -> (B T) C H W'), size=(224, 224), mode='bilinear')
            x = rearrange(x, '(B T) C H W -> B C T H W', B=len(v)).expand(-1, 3, -1, -1, -1) * 2  # [-1, 1], RGB
            out.append(i3d(x.to(device)).float().cpu())
    return frechet_distance(*(torch.cat(out) for out in features))


def codebook_stats(counts):
    """(perplexity, usage) from a code histogram (bincount, minlength=n_codes): exp(entropy), 1..n_codes; share used.
    0-dim tensors on the histogram's device: a training step logs them without waiting for the GPU."""
    p = counts.double() / counts.sum()
    return torch.exp(-(p * p.clamp(min=1e-300).log()).sum()), (p > 0).double().mean()


def add_prediction_sums(sums, context, future, pred, reader=None, classes=None):
    """Add to the dict sums the prediction_scores of pred, summed over its videos, and those of two trivial baselines
    (' black' frames, the ' last frame' of context again) against the real future (B, C, T, H, W); with the digit
    reader and the videos' classes (two_digit_classes), 'kept' too: the share of frames it reads right, summed."""
    for name, guess in (('', pred), (' black', torch.full_like(future, -0.5)),
                        (' last frame', context[:, :, -1:].expand_as(future))):
        part = {k + name: v.sum().item() for k, v in prediction_scores(guess, future).items()}
        if classes is not None:  # digit_reading's share is a mean over the videos: times their number, a sum
            part['kept' + name] = digit_reading(reader, guess, classes)['kept'] * len(guess)
        sums.update({k: sums.get(k, 0.0) + v for k, v in part.items()})


def prediction_scores(pred, real):
    """Moving MNIST leaderboard scores of pred vs real (B, C, T, H, W) in [-0.5, 0.5], each (B,): MSE per frame (squared
    error summed over its pixels in [0, 1]), SSIM (nan below 11x11 pixels), PSNR per frame; all averaged over frames."""
    frames = [rearrange(v.float(), 'B C T H W -> (B T) C 1 H W') for v in (pred, real)]
    s = ssim(pred, real) if min(pred.shape[-2:]) >= 11 else torch.full((len(pred),), math.nan)  # as evaluate's
    return dict(mse=(pred.float() - real.float()).pow(2).sum((1, 3, 4)).mean(1), ssim=s,
                psnr=psnr(*frames).view(len(pred), -1).mean(1))


# ------------------------------------------------------------------------------------------------------------------
# A digit reader: which digits a Moving MNIST frame shows, to score samples and predictions by what a viewer sees

READER_FILE = Path(__file__).resolve().parent / 'weights' / 'digit-reader' / 'reader.pt'


class DigitReader(nn.Module):
    """Frames (N, 1, 64, 64) in [-0.5, 0.5] -> (N, 10) logits, an independent yes/no per digit class (multi-label).
    Global max pooling: a digit counts wherever it is; the last layer sees 36x36 pixels, more than one digit's 28."""
    def __init__(self):
        super().__init__()
        conv = lambda c_in, c_out: (nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU())  # noqa: E731
        self.net = nn.Sequential(*conv(1, 16), nn.MaxPool2d(2), *conv(16, 32), nn.MaxPool2d(2), *conv(32, 64),
                                 nn.MaxPool2d(2), *conv(64, 128), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                                 nn.Linear(128, 10))

    def forward(self, frames):
        return self.net(frames)


def reader_frames(digits, labels, n, rng):
    """n training frames (n, 1, 64, 64) in [-0.5, 0.5] and multi-hot targets (n, 10): 60% two digits, 15% one, and
    25% with no digit to find (blank, or a two-digit frame cut in 8 or 16 px tiles, shuffled and turned), so that
    strokes of digit size that form no digit read as none. Half are blurred, as a VQ-VAE's reconstructions are."""
    frames, targets = np.zeros((n, MMNIST_SIZE, MMNIST_SIZE), np.uint8), np.zeros((n, 10), np.float32)
    kind = rng.choice(4, size=n, p=[0.6, 0.15, 0.1, 0.15])  # two digits, one, blank, fragments
    for i in range(n):
        for _ in range({0: 2, 1: 1, 2: 0, 3: 2}[kind[i]]):
            k, (y, x) = rng.integers(len(digits)), rng.integers(0, MMNIST_SIZE - DIGIT_SIZE + 1, size=2)
            np.maximum(frames[i, y:y + DIGIT_SIZE, x:x + DIGIT_SIZE], digits[k], out=frames[i, y:y + DIGIT_SIZE,
                                                                                           x:x + DIGIT_SIZE])
            targets[i, labels[k]] = kind[i] < 2
        if kind[i] == 3:
            frames[i] = shuffle_tiles(frames[i], int(rng.choice([8, 16])), rng)
    x = to_video(frames).transpose(0, 1)  # (n, 1, 64, 64) in [-0.5, 0.5]
    blur = torch.from_numpy(rng.random(n) < 0.5)
    sigma = float(rng.uniform(0.5, 1.5))
    g = torch.exp(-torch.arange(-3, 4.0) ** 2 / (2 * sigma ** 2))
    g = (g / g.sum()).view(1, 1, 1, 7)
    blurred = F.conv2d(F.conv2d(x + 0.5, g, padding=(0, 3)), g.transpose(2, 3), padding=(3, 0)) - 0.5
    return torch.where(blur[:, None, None, None], blurred, x), torch.from_numpy(targets)


def shuffle_tiles(frame, tile, rng):
    """A (H, W) frame cut into tile x tile squares, shuffled and each turned by a random multiple of 90 degrees."""
    H, W = frame.shape
    tiles = frame.reshape(H // tile, tile, W // tile, tile).transpose(0, 2, 1, 3).reshape(-1, tile, tile)
    tiles = np.stack([np.rot90(t, int(rng.integers(4))) for t in tiles[rng.permutation(len(tiles))]])
    return tiles.reshape(H // tile, W // tile, tile, tile).transpose(0, 2, 1, 3).reshape(H, W)


def train_digit_reader(mnist_dir=None, steps=3000, batch_size=64, seed=0, out=READER_FILE):
    """Train a DigitReader on frames of MNIST's training digits (never the held-out ones) and save its weights."""
    digits, labels, source = mnist_digits(mnist_dir, train=True, download=False)
    rng, reader = np.random.default_rng(seed), DigitReader()
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(reader.parameters(), lr=2e-3)
    for step in tqdm(range(steps), desc='digit reader', disable=None):
        x, y = reader_frames(digits, labels, batch_size, rng)
        loss = F.binary_cross_entropy_with_logits(reader(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    atomic_write(str(out), lambda f: torch.save(dict(kind='digit-reader', source=source, model=reader.state_dict()),
                                                f))
    return reader.eval()


def load_digit_reader(path=READER_FILE):
    """The committed DigitReader, in eval mode."""
    state = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(state, dict) or state.get('kind') != 'digit-reader':
        raise ValueError(f"{path} is not a digit reader's file: make one with data.train_digit_reader()")
    reader = DigitReader()
    reader.load_state_dict(state['model'])
    return reader.eval()


@torch.no_grad()
def read_digits(reader, video, batch_size=512):
    """Videos (B, 1, T, 64, 64) in [-0.5, 0.5] -> (B, T, 10): the probability that each digit is in each frame."""
    frames = rearrange(video.float(), 'B C T H W -> (B T) C H W')
    probs = torch.cat([reader(f).sigmoid() for f in frames.split(batch_size)])
    return probs.view(video.shape[0], video.shape[2], 10)


def digit_reading(reader, video, classes):
    """{'legible': ..., 'kept': ...}: shares of the frames of video (B, 1, T, 64, 64) whose digits, classes (B, 2), the
    reader finds (digit_scores)."""
    return {k: v.float().mean().item() for k, v in digit_scores(read_digits(reader, video), classes).items()}


def two_digit_classes(dataset, n):
    """(n, 2) digit classes of the first n videos of a two-digit, labelled MovingMNIST at 64x64, else None: what
    the digit reader can score."""
    if not (isinstance(dataset, MovingMNIST) and dataset.n_digits == 2 and dataset.labels is not None):
        return None
    return torch.stack([dataset.classes(i) for i in range(n)])


def digit_scores(probs, digits=None):
    """Per frame (B, T) bool: 'legible', the reader finds two digits (its second most likely has p > 0.5), and, given
    the digits (B, 2) the video shows, 'kept', it names those two: its two most likely digits, both with p > 0.5 (for
    a pair of equal digits, its most likely one, with p > 0.5). Without the p > 0.5, a blank frame's arbitrary top two
    would sometimes match."""
    top = probs.topk(2, dim=-1)
    scores = dict(legible=top.values[..., 1] > 0.5)
    if digits is not None:
        a, b = digits[:, None, 0], digits[:, None, 1]  # (B, 1)
        first, second = top.indices[..., 0], top.indices[..., 1]
        pair = (((first == a) & (second == b)) | ((first == b) & (second == a))) & scores['legible']
        scores['kept'] = torch.where(a == b, (first == a) & (top.values[..., 0] > 0.5), pair)
    return scores
