"""VideoGPT in one file: a VQ-VAE that compresses video into a grid of discrete codes, and a GPT prior over the codes.

    Yan, Zhang, Abbeel, Srinivas 2021, "VideoGPT: Video Generation using VQ-VAE and Transformers" (arXiv 2104.10157)
    van den Oord et al. 2017, "Neural Discrete Representation Learning" (VQ-VAE, EMA codebook in its appendix)
    Yu et al. 2023, "MAGVIT: Masked Generative Video Transformer" (masked parallel decoding, `causal=False`)

This is a rewrite, not a port, of the original code (github.com/wilson1yan/VideoGPT). Where it departs from it:
GroupNorm instead of BatchNorm, learned position embeddings in the VQ-VAE's axial attention (the paper has them, the
code did not), every power-of-2 downsampling builds, a measured data variance instead of `/ 0.06`, a distributed-safe
EMA codebook kept in fp32, `F.scaled_dot_product_attention` with a KV cache, and a plain PyTorch training loop.

Contents
    Part I, the papers' models, in their order: the VQ-VAE (config, 3D convolutions, axial attention, encoder and
        decoder, EMA codebook), the prior (config, conditioning, transformer, KV-cached sampling with guidance), then
        MAGVIT's masked prior (tasks, mask schedule, parallel decoding).
    Part II, tools: long videos, sampling to files, frame prediction and completion, `evaluate`, presets,
        checkpoints and pretrained weights, MAGVIT's 3D inflation.
    Part III, training (one loop for both stages) and the command line, `main` last.
    The checks on the models' inputs and the scores of videos (PSNR, SSIM, FVD) are in data.py, out of the way.

Axis legend: B batch, C channels, T/H/W video frames/height/width, t/h/w latent grid, L = t*h*w tokens, D width,
    E code size, K codes, S conditioning tokens, nh heads, hd = D // nh. Videos (B, C, T, H, W) in [-0.5, 0.5].
"""
import argparse
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange, repeat
from tqdm import tqdm

import data  # datasets, checkpoint and other files, pictures: the model classes never use it
from data import (codebook_stats, find_vqvae, fvd, gpt_inputs, init_prior, load_checkpoint, save_checkpoint, ssim,
                  strict_bool)
from data import (PERCEPTUAL, check_codes, check_gpt_config, check_knobs, check_prediction, check_prior_inputs,
                  check_sampling_inputs, check_scored_videos, check_train_config, check_video, check_vqvae_config, need)
# data.py's names this file does not call, importable from it as before they moved there (vg.psnr and the others):
MAX_VALUES, check_fields, check_pixels, export_weights = (data.MAX_VALUES, data.check_fields, data.check_pixels,
                                                          data.export_weights)
frechet_distance, prediction_scores, psnr = data.frechet_distance, data.prediction_scores, data.psnr


# ==================================================================================================================
# PART I. THE PAPERS' MODELS
# ==================================================================================================================
# Stage one, the VQ-VAE (VideoGPT section 3.1, figure 4): its configuration, 3D convolutions and axial attention

@dataclass
class VQVAEConfig:
    in_channels: int = 1               # 1 for Moving MNIST, 3 for RGB
    sequence_length: int = 16          # T
    resolution: int = 64               # H = W
    downsample: tuple = (4, 4, 4)      # per-axis factors (T, H, W), each in {1, 2, 4, 8, ...}: 16x64x64 -> 4x16x16
    n_hiddens: int = 240               # D, the trunk width (paper table A.1)
    n_res_layers: int = 2              # attention residual blocks in the encoder, and again in the decoder
    n_head: int = 2                    # heads of each axial attention
    axial_attention: bool = True       # False: the paper's table 3 ablation
    embedding_dim: int = 64            # E
    n_codes: int = 512                 # K
    beta: float = 0.25                 # commitment weight (VQ-VAE eq. 3)
    ema_decay: float = 0.99
    dead_code_threshold: float = 1.0   # restart codes whose EMA count drops below this
    padding: str = 'zeros'             # 'reflect': MAGVIT's, the same content gets the same codes near an edge
    time_downsample: str = 'early'     # time halved in the encoder's first stages (3D then 2D, MAGVIT's), or 'late'
    gan_weight: float = 0.0            # > 0: MAGVIT's adversarial loss, from a 3D discriminator (Part III)
    lecam_weight: float = 0.0          # LeCam regularisation of that discriminator (MAGVIT: 0.001)
    gan_warmup: int = 0                # reconstruction-only steps before the adversarial term starts (as VQGAN's)
    perceptual_weight: float = 0.0     # > 0: a per-frame perceptual loss, from TrainConfig.perceptual_net

    def __post_init__(self):
        self.downsample = tuple(self.downsample)
        check_vqvae_config(self)  # each field in its range, the sizes divisible by the downsampling

    @property
    def latent_shape(self):
        return tuple(n // d for n, d in zip((self.sequence_length, self.resolution, self.resolution), self.downsample))


def group_norm(channels):
    # GroupNorm, not the original's BatchNorm (noisy statistics at 1-8 videos per GPU, eval unlike train): per sample.
    return nn.GroupNorm(math.gcd(32, channels), channels)  # 32 groups (Wu & He 2018), fewer for narrow trunks


def strided_conv(c_in, c_out, stride, transposed=False, padding='zeros'):
    # Padding 1: kernel 4 / stride 2 halves an axis ((n + 2 - 4) / 2 + 1), kernel 3 keeps it: any factor builds, even 1.
    kernel = tuple(4 if s == 2 else 3 for s in stride)
    if not transposed:
        return nn.Conv3d(c_in, c_out, kernel, stride, padding=1, padding_mode=padding)
    if padding == 'zeros':
        return nn.ConvTranspose3d(c_in, c_out, kernel, stride, padding=1)  # the mirror: doubles an axis exactly
    # torch's transposed convolutions only pad with zeros: reflect upsamples (nearest), then convolves.
    return nn.Sequential(nn.Upsample(scale_factor=stride), nn.Conv3d(c_in, c_out, 3, padding=1, padding_mode=padding))


class AxisPositionEmbedding(nn.Module):
    """Learned spatio-temporal position embeddings: one table per axis, broadcast and summed -> (t, h, w, D)."""
    def __init__(self, shape, dim):
        super().__init__()
        self.tables = nn.ParameterList([nn.Parameter(torch.randn(n, dim) * 0.02) for n in shape])

    def forward(self):
        t, h, w = self.tables
        return t[:, None, None] + h[None, :, None] + w[None, None, :]  # (t, h, w, D)


def attention(q, k, v, causal=False, dropout_p=0.0, fast=True):
    """Multi-head attention, q (..., Lq, hd), k, v (..., Lk, hd) -> (..., Lq, hd); causal: q is the last Lq of Lk."""
    Lq, Lk = q.shape[-2], k.shape[-2]  # Lq < Lk only for the prior's KV cache (sampling, below): new queries, old keys
    if fast and not (causal and Lq != Lk):  # the fused kernel never builds Lq x Lk; its causal mask assumes Lq = Lk
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (..., Lq, Lk)
    if causal:  # query i sees keys j <= i + (Lk - Lq), a mask built on the fly: no L x L buffer to keep in memory
        i = torch.arange(Lq, device=q.device)[:, None] + (Lk - Lq)
        att = att.masked_fill(torch.arange(Lk, device=q.device) > i, float('-inf'))
    return F.dropout(att.softmax(dim=-1), dropout_p) @ v  # the reference path: Vaswani et al. 2017, eq. 1


class AxialAttention(nn.Module):
    """Multi-head self-attention along t, along h and along w of a (B, D, t, h, w) volume, summed."""
    def __init__(self, dim, n_head):
        super().__init__()
        self.n_head = n_head
        # Per-axis q, k, v projections as in the original, in one Linear: one (D -> 9D) matmul beats three small ones.
        self.qkv, self.proj = nn.Linear(dim, 9 * dim), nn.Linear(3 * dim, dim)  # one proj = three per-axis ones summed

    def forward(self, x):
        B, D, t, h, w = x.shape
        qkv = self.qkv(rearrange(x, 'B D t h w -> B t h w D')).chunk(3, dim=-1)  # 3 x (B, t, h, w, 3D)
        outs = []
        for axis, qkv_axis in zip('thw', qkv):  # along one axis: a batch of 1-D sequences, the other axes folded into B
            rest = ' '.join(a for a in 'thw' if a != axis)
            q, k, v = rearrange(qkv_axis, f'B t h w (qkv nh hd) -> qkv (B {rest}) nh {axis} hd', qkv=3, nh=self.n_head)
            y = attention(q, k, v, fast=x.is_cuda)  # on a CPU, 8-32 tokens run faster the explicit way (RESULTS.md)
            outs.append(rearrange(y, f'(B {rest}) nh {axis} hd -> B t h w (nh hd)', B=B, t=t, h=h, w=w))
        return rearrange(self.proj(torch.cat(outs, dim=-1)), 'B t h w D -> B D t h w')


class AttentionResidualBlock(nn.Module):
    """x + f(x) with f = norm-ReLU-conv3-norm-ReLU-conv1-norm-ReLU-axial attention (figure 4). (B, D, t, h, w)."""
    def __init__(self, cfg):
        super().__init__()
        dim = cfg.n_hiddens
        self.conv = nn.Sequential(  # a bottleneck to half the width, as in the original code
            group_norm(dim), nn.ReLU(), nn.Conv3d(dim, dim // 2, 3, padding=1, padding_mode=cfg.padding),
            group_norm(dim // 2), nn.ReLU(), nn.Conv3d(dim // 2, dim, 1), group_norm(dim), nn.ReLU())
        self.attn = AxialAttention(dim, cfg.n_head) if cfg.axial_attention else None

    def forward(self, x, pos):
        if torch.is_grad_enabled():  # checkpointing: else the attention's copies hold ~35x the input's memory
            return x + torch.utils.checkpoint.checkpoint(self.branch, x, pos, use_reentrant=False)
        return x + self.branch(x, pos)

    def branch(self, x, pos):
        h = self.conv(x)
        return h if self.attn is None else self.attn(h + rearrange(pos, 't h w D -> D t h w'))


def stage_strides(cfg):
    """The encoder's strides per stage (the decoder's: reversed). Each axis is halved log2(factor) times, time in the
    first stages ('early': MAGVIT's 3D, then 2D) or the last ('late'): (2, 8, 8) early is (2, 2, 2), (1, 2, 2) twice."""
    halvings = [int(math.log2(d)) for d in cfg.downsample]
    n, late = max(halvings), (cfg.time_downsample == 'late', False, False)
    return [tuple(2 if (i >= n - k if lt else i < k) else 1 for k, lt in zip(halvings, late)) for i in range(n)]


class Encoder(nn.Module):
    """(B, C, T, H, W) video, (t, h, w, D) position embeddings -> (B, D, t, h, w), each axis downsampled by 2^k."""
    def __init__(self, cfg):
        super().__init__()
        D, strides = cfg.n_hiddens, stage_strides(cfg) + [(1, 1, 1)]  # the strided stages, then a size-keeping conv
        self.convs = nn.ModuleList([strided_conv(D if i else cfg.in_channels, D, s, padding=cfg.padding)
                                    for i, s in enumerate(strides)])  # stage 0 reads C: at full size width D costs most
        self.blocks = nn.ModuleList([AttentionResidualBlock(cfg) for _ in range(cfg.n_res_layers)])
        self.out = nn.Sequential(group_norm(D), nn.ReLU())

    def forward(self, x, pos):
        for conv in self.convs[:-1]:
            x = F.relu(conv(x))
        x = self.convs[-1](x)  # no ReLU before the residual blocks
        for block in self.blocks:
            x = block(x, pos)
        return self.out(x)


class Decoder(nn.Module):
    """(B, D, t, h, w), (t, h, w, D) position embeddings -> (B, C, T, H, W): the encoder mirrored, transposed."""
    def __init__(self, cfg):
        super().__init__()
        D, strides = cfg.n_hiddens, stage_strides(cfg)[::-1]  # stage i undoes encoder stage n - 1 - i
        self.blocks = nn.ModuleList([AttentionResidualBlock(cfg) for _ in range(cfg.n_res_layers)])
        self.norm = nn.Sequential(group_norm(D), nn.ReLU())
        stages = [strided_conv(D, cfg.in_channels if i == len(strides) - 1 else D, stride, True, cfg.padding)
                  for i, stride in enumerate(strides)]  # the last stage writes the C channels
        self.convs = nn.ModuleList(stages or [nn.Conv3d(D, cfg.in_channels, 3, padding=1, padding_mode=cfg.padding)])

    def forward(self, x, pos):
        for block in self.blocks:
            x = block(x, pos)
        x = self.norm(x)
        for conv in self.convs[:-1]:
            x = F.relu(conv(x))
        return self.convs[-1](x)


# ------------------------------------------------------------------------------------------------------------------
# The EMA codebook (van den Oord et al. 2017, appendix A.1), then the VQ-VAE around it

def _is_dist():
    return dist.is_available() and dist.is_initialized()


class EMACodebook(nn.Module):
    """(B, E, t, h, w) -> quantised (B, E, t, h, w), codes (B, t, h, w), losses; buffers moved by EMA, not gradients."""
    def __init__(self, n_codes, dim, decay=0.99, dead_threshold=1.0, eps=1e-5):
        super().__init__()
        self.n_codes, self.decay, self.dead_threshold, self.eps = n_codes, decay, dead_threshold, eps
        self.register_buffer('embeddings', torch.randn(n_codes, dim))  # (K, E) e_k = m_k / N_k, moved in train mode
        self.register_buffer('cluster_size', torch.zeros(n_codes))    # EMA of N_k
        self.register_buffer('embed_sum', torch.randn(n_codes, dim))   # EMA of m_k
        self.register_buffer('initialized', torch.tensor(False))  # saved: a reloaded model never re-initialises

    def nearest(self, flat):
        """(N, E) vectors -> (N,) index of the nearest code, (N,) squared distance to it, both computed in fp32."""
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2, and ||z||^2 joins after the min: no (N, K, E) tensor is built.
        with torch.no_grad(), torch.autocast(flat.device.type, enabled=False):  # argmin: no gradient, no (N, K) graph
            dist2, codes = (self.embeddings.pow(2).sum(1) - 2 * flat.float() @ self.embeddings.t()).min(1)
            return codes, (dist2 + flat.float().pow(2).sum(1)).clamp_min(0)

    def _random_rows(self, z, n, weights=None):
        """n rows of z drawn with replacement, uniformly or with probability proportional to weights."""
        rows = z[torch.randint(0, z.shape[0], (n,), device=z.device) if weights is None else
                 torch.multinomial(weights + 1e-12, n, replacement=True)]  # + 1e-12: all-zero errors may happen
        if _is_dist():  # rank 0's rows for every rank: all restart the same codes, the buffers stay equal
            dist.broadcast(rows, 0)
        return rows

    @torch.no_grad()
    def _ema_update(self, z, codes, err):
        if not self.initialized:  # start at the first batch's encoder outputs: codes far from the data stay dead
            self.embeddings.copy_(self._random_rows(z, self.n_codes))
            self.embed_sum.copy_(self.embeddings)
            self.cluster_size.fill_(1.0)
            self.initialized.fill_(True)
        counts = torch.bincount(codes, minlength=self.n_codes).to(z.dtype)        # (K,)  n_k in this batch
        sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, z)           # (K, E) sum of z assigned to k
        if _is_dist():  # the statistics of the global batch, so that every rank computes the same update
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.lerp_(counts, 1 - self.decay)  # N_k <- decay * N_k + (1 - decay) * n_k
        self.embed_sum.lerp_(sums, 1 - self.decay)       # m_k <- decay * m_k + (1 - decay) * sum_k
        n = self.cluster_size.sum()  # Laplace smoothing keeps N_k > 0 for unused codes: the division is defined
        smoothed = (self.cluster_size + self.eps) / (n + self.n_codes * self.eps) * n
        self.embeddings.copy_(self.embed_sum / smoothed[:, None])
        # Restart dead codes at encoder outputs drawn by squared error (k-means++): uniform ones land on the background.
        dead = self.cluster_size < self.dead_threshold
        if dead.any():  # identical on every rank: the counts were all-reduced
            fresh = self._random_rows(z, int(dead.sum()), err)
            self.embeddings[dead] = fresh
            self.embed_sum[dead] = fresh * self.dead_threshold
            self.cluster_size[dead] = self.dead_threshold

    def forward(self, z):
        with torch.autocast(z.device.type, enabled=False):  # fp32: bf16 flips nearest codes, loses (1 - decay) updates
            z = z.float()
            flat = rearrange(z, 'B E t h w -> (B t h w) E')
            codes, err = self.nearest(flat)
            if self.training:
                self._ema_update(flat, codes, err)
            codes = codes.view(z.shape[0], *z.shape[2:])                           # (B, t, h, w)
            quantized = rearrange(F.embedding(codes, self.embeddings), 'B t h w E -> B E t h w')
            commitment = F.mse_loss(z, quantized.detach())  # VQ-VAE eq. 3 (beta is applied in VQVAE.forward)
            quantized = z + (quantized - z).detach()  # straight-through: gradients pass as if quantising were identity
            # Effective number of codes used (exp of the entropy), and the fraction used at all.
            perplexity, usage = codebook_stats(torch.bincount(codes.flatten(), minlength=self.n_codes))
        return quantized, codes, commitment, perplexity, usage


def bounded_mse(x_hat, x):
    """MSE where overshooting a target on a bound of [-0.5, 0.5] is free: black stays black (RESULTS.md)."""
    err = x_hat.float() - x.float()
    return err.masked_fill(((x <= -0.5) & (err < 0)) | ((x >= 0.5) & (err > 0)), 0.0).pow(2).mean()


class VQVAE(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.config = cfg
        self.pos = AxisPositionEmbedding(cfg.latent_shape, cfg.n_hiddens)  # the paper's, shared by all axial layers
        self.encoder = Encoder(cfg)
        self.pre_vq = nn.Conv3d(cfg.n_hiddens, cfg.embedding_dim, 1)
        self.codebook = EMACodebook(cfg.n_codes, cfg.embedding_dim, cfg.ema_decay, cfg.dead_code_threshold)
        self.post_vq = nn.Conv3d(cfg.embedding_dim, cfg.n_hiddens, 1)
        self.decoder = Decoder(cfg)
        # Reconstruction loss MSE / Var(x): 1.0 is "no better than the mean pixel" on any data.
        self.register_buffer('data_variance', torch.tensor(1.0))  # Var(x) of the first batch, not the original's 0.06
        self.register_buffer('variance_set', torch.tensor(False))  # buffers: reloaded models keep their Var(x)
        self.to(memory_format=torch.channels_last_3d)  # (B, T, H, W, C) convolutions: 5-13% faster steps (RESULTS.md)

    def forward(self, x):
        """(B, C, T, H, W) in [-0.5, 0.5] -> dict of losses, perplexity, usage, x_hat (B, C, T, H, W), codes."""
        x = check_video(self.config, x).to(self.pre_vq.weight.dtype)  # float64 or fp16 input: the weights' dtype
        if self.training and not self.variance_set:
            var = x.detach().float().var()
            if _is_dist():  # every rank must normalise by the same number
                dist.all_reduce(var)
                var /= dist.get_world_size()
            self.data_variance.copy_(var.clamp(min=1e-6))
            self.variance_set.fill_(True)
        pos = self.pos()                                                     # (t, h, w, D)
        z = self.pre_vq(self.encoder(x, pos))                                # (B, E, t, h, w)
        quantized, codes, commitment, perplexity, usage = self.codebook(z)
        x_hat = self.decoder(self.post_vq(quantized), pos)                   # (B, C, T, H, W)
        recon = bounded_mse(x_hat, x) / self.data_variance
        return dict(loss=recon + self.config.beta * commitment, recon_loss=recon, commitment_loss=commitment,
                    perplexity=perplexity, usage=usage, x_hat=x_hat, codes=codes)

    @torch.no_grad()
    def encode(self, x):
        """(B, C, T, H, W) in [-0.5, 0.5] -> codes (B, t, h, w) int64. Never changes the codebook."""
        x = check_video(self.config, x).to(self.pre_vq.weight.dtype)  # float64 or fp16 input: the weights' dtype
        z = self.pre_vq(self.encoder(x, self.pos()))                         # (B, E, t, h, w)
        codes = self.codebook.nearest(rearrange(z, 'B E t h w -> (B t h w) E'))[0]
        return codes.view(x.shape[0], *self.config.latent_shape)

    def decode(self, codes):
        """codes (B, t, h, w) int64 -> video (B, C, T, H, W), roughly in [-0.5, 0.5]; longer codes: decode_long."""
        if torch.is_tensor(codes) and codes.ndim == 4 and codes.shape[1] > self.config.latent_shape[0]:
            return self.decode_long(codes)
        check_codes(codes, self.config.latent_shape, self.config.n_codes)
        quantized = rearrange(F.embedding(codes, self.codebook.embeddings), 'B t h w E -> B E t h w')
        return self.decoder(self.post_vq(quantized), self.pos())


# ------------------------------------------------------------------------------------------------------------------
# Stage two, the prior (VideoGPT section 3.2): its configuration, conditioning and transformer

@dataclass
class GPTConfig:
    n_codes: int = 512                  # K, the VQ-VAE's codebook size
    latent_shape: tuple = (4, 16, 16)   # (t, h, w) of the VQ-VAE's codes
    n_layer: int = 8
    n_head: int = 4
    n_embd: int = 192                   # D
    dropout: float = 0.1                # on the residual paths
    attn_dropout: float = 0.0           # on the attention weights
    causal: bool = True                 # False: bidirectional, for masked (MAGVIT-style) parallel decoding
    n_cond_frames: int = 0              # > 0: cross-attend to a 3D ResNet over this many pixel frames
    frame_channels: int = 1             # C of the conditioning frames
    frame_size: int = 64                # H = W of the conditioning frames (a multiple of 8)
    frame_width: int = 128              # channels of the frame encoder's 3D ResNet
    cond_dim: int = 0                   # > 0: conditional LayerNorm on a (B, cond_dim) vector (class, actions)
    cond_dropout: float = 0.0           # train on the null (all-zero) vector this often: enables sample(guidance=)
    fast_attention: bool = True         # False: the explicit-softmax reference path (for tests and teaching)
    tasks: tuple = ('uncond',)          # masked priors: the MAGVIT tasks trained on, each video draws one (TASKS)
    codebook: str = ''                  # the digest of the VQ-VAE's codebook it learned (train_gpt): pairs checked

    def __post_init__(self):
        self.latent_shape, self.tasks = tuple(self.latent_shape), tuple(self.tasks)
        check_gpt_config(self, task_mask)  # task_mask (MAGVIT's section) raises for a task this grid cannot take

    @property
    def block_size(self):
        return math.prod(self.latent_shape)  # L


class FrameEncoder(nn.Module):
    """A 3D ResNet trained with the prior: (B, C, n_cond_frames, H, W) -> (B, S, D) tokens, S = n_cond_frames HW/64."""
    def __init__(self, cfg):
        super().__init__()
        D = cfg.frame_width  # narrower than n_embd: a 3D conv has 27 D^2 weights, 80M in all at D = 512
        self.stem = nn.Conv3d(cfg.frame_channels, D, 3, padding=1)  # not ResNet-34: 3 stages suffice at 64x64
        self.stages = nn.ModuleList([nn.ModuleDict(dict(down=strided_conv(D, D, (1, 2, 2)), res=nn.Sequential(
            group_norm(D), nn.ReLU(), nn.Conv3d(D, D, 3, padding=1),
            group_norm(D), nn.ReLU(), nn.Conv3d(D, D, 3, padding=1)))) for _ in range(3)])
        self.pos = AxisPositionEmbedding((cfg.n_cond_frames, cfg.frame_size // 8, cfg.frame_size // 8), D)
        self.out = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, cfg.n_embd))  # lifted to the transformer's width

    def forward(self, frames):
        x = self.stem(frames)
        for stage in self.stages:
            x = stage.down(x)
            x = x + stage.res(x)
        x = rearrange(x, 'B D t h w -> B t h w D') + self.pos()
        return self.out(rearrange(x, 'B t h w D -> B (t h w) D'))  # (B, S, n_embd)


class CondLayerNorm(nn.Module):
    """LayerNorm (B, L, D) -> (B, L, D); if cond_dim, gain and bias are affine in cond (B, cond_dim): class, actions."""
    def __init__(self, dim, cond_dim=0):
        super().__init__()
        self.cond_dim = cond_dim
        if cond_dim:
            self.gain, self.bias = nn.Linear(cond_dim, dim), nn.Linear(cond_dim, dim)
        else:
            self.weight, self.bias = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))
        self.init_identity()

    def init_identity(self):
        if self.cond_dim:  # zero weights, gain bias 1, bias bias 0: a plain LayerNorm at first, conditioning a no-op
            for lin, b in ((self.gain, 1.0), (self.bias, 0.0)):
                nn.init.zeros_(lin.weight)
                nn.init.constant_(lin.bias, b)

    def forward(self, x, cond=None):
        if not self.cond_dim:  # F.layer_norm, not nn.LayerNorm: one module call less per norm when sampling
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias)
        return F.layer_norm(x, x.shape[-1:]) * self.gain(cond)[:, None] + self.bias(cond)[:, None]


class SelfAttention(nn.Module):
    """Multi-head self-attention, causal or not. (B, L, D) -> (B, L, D); with a cache, L new tokens at `pos`."""
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.causal, self.fast, self.dropout = cfg.n_head, cfg.causal, cfg.fast_attention, cfg.attn_dropout
        self.qkv, self.proj = nn.Linear(cfg.n_embd, 3 * cfg.n_embd), nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x, cache=None, pos=0):
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)  # (3, B, nh, L, hd)
        q, kv = qkv[0], qkv[1:]
        if cache is not None:
            cache[:, :, :, pos:pos + L] = kv  # KV cache (2, B, nh, L_max, hd) holds positions < pos; a step is O(pos)
            kv = cache[:, :, :, :pos + L]
        # A single new token may see every cached position, so it needs no mask at all.
        y = attention(q, kv[0], kv[1], self.causal and L > 1, self.dropout if self.training else 0.0, self.fast)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))  # heads side by side again


class CrossAttention(nn.Module):
    """Tokens attend to the conditioning frames' features. (B, L, D), (B, S, D) -> (B, L, D)."""
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.fast, self.dropout = cfg.n_head, cfg.fast_attention, cfg.attn_dropout
        self.q, self.kv = nn.Linear(cfg.n_embd, cfg.n_embd), nn.Linear(cfg.n_embd, 2 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def keys_values(self, ctx):
        """(B, S, D) -> (2, B, nh, S, hd). Computed once per sample() call, since the frames do not change."""
        return rearrange(self.kv(ctx), 'B S (two nh hd) -> two B nh S hd', two=2, nh=self.n_head)

    def forward(self, x, kv):
        q = rearrange(self.q(x), 'B L (nh hd) -> B nh L hd', nh=self.n_head)
        y = attention(q, kv[0], kv[1], dropout_p=self.dropout if self.training else 0.0, fast=self.fast)
        return self.proj(rearrange(y, 'B nh L hd -> B L (nh hd)'))


class Block(nn.Module):
    """Pre-LN transformer block: self-attention, cross-attention to the frames if any, then an MLP."""
    def __init__(self, cfg):
        super().__init__()
        D, norm = cfg.n_embd, lambda: CondLayerNorm(cfg.n_embd, cfg.cond_dim)  # each sub-layer after its own norm
        self.ln1, self.attn = norm(), SelfAttention(cfg)
        if cfg.n_cond_frames:
            self.ln_x, self.xattn = norm(), CrossAttention(cfg)
        self.ln2, self.mlp = norm(), nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cond=None, frame_kv=None, cache=None, pos=0):
        x = x + self.drop(self.attn(self.ln1(x, cond), cache, pos))
        if frame_kv is not None:
            x = x + self.drop(self.xattn(self.ln_x(x, cond), frame_kv))
        return x + self.drop(self.mlp(self.ln2(x, cond)))


# ------------------------------------------------------------------------------------------------------------------
# The autoregressive prior, its KV-cached sampling and classifier-free guidance

def sample_logits(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """(B, K) logits -> (B,) token ids, drawn after temperature, top-k and nucleus (top-p) filtering."""
    check_knobs(None, temperature, top_k, top_p)
    logits = logits / max(temperature, 1e-6)  # temperature 0 would divide by zero; this is greedy in effect
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float('-inf'))
    if top_p is not None:  # keep the smallest set of tokens whose probabilities sum to >= top_p (Holtzman et al. 2020)
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # tokens entirely beyond the nucleus; the top one stays
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float('-inf'))
    # Inverse-CDF sampling, a uniform number per row: torch.multinomial's draw, a quarter of its CPU cost (RESULTS.md).
    cdf = logits.softmax(-1).cumsum(-1)  # (B, K)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)[:, 0]


class VideoGPT(nn.Module):
    """The prior p(codes | frames, cond) = prod_i p(code_i | codes_<i, frames, cond) over codes in raster order."""
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.n_codes + 1, cfg.n_embd)  # ids 0..K-1: codes; id K: [MASK] (masked decoding)
        self.pos_emb = AxisPositionEmbedding(cfg.latent_shape, cfg.n_embd)
        self.sos = nn.Parameter(torch.randn(cfg.n_embd) * 0.02)  # the start token: position i sees codes < i only
        self.frame_encoder = FrameEncoder(cfg) if cfg.n_cond_frames else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f, self.head = CondLayerNorm(cfg.n_embd, cfg.cond_dim), nn.Linear(cfg.n_embd, cfg.n_codes, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init: 2 * n_layer branches keep the residual variance
            if name.endswith(('attn.proj.weight', 'xattn.proj.weight', 'mlp.2.weight')):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, CondLayerNorm):  # after its Linears (apply visits children first): undo their init
            m.init_identity()

    def _frame_kv(self, frames):
        """Cross-attention keys and values of each block for the conditioning frames, or Nones."""
        ctx = None if frames is None else self.frame_encoder(frames)  # (B, S, D)
        return [None if ctx is None else block.xattn.keys_values(ctx) for block in self.blocks]

    def _trunk(self, x, cond, frame_kv, caches=None, pos=0):
        for i, block in enumerate(self.blocks):
            x = block(x, cond, frame_kv[i], None if caches is None else caches[i], pos)
        return self.ln_f(x, cond)

    def forward(self, codes, frames=None, cond=None, mask=None):
        """codes (B, t, h, w) -> logits (B, t, h, w, K), mean cross-entropy (nats) of code i given codes < i, or, if
        not causal, of the codes where mask (B, t, h, w) is True, made [MASK] (default: a task, then schedule_mask)."""
        frames, cond = check_prior_inputs(self, codes, frames, cond)
        codes = codes.long()  # int32 codes are accepted; embeddings and the loss take int64
        cfg, B = self.config, codes.shape[0]
        if self.training and cfg.cond_dropout and cond is not None:  # classifier-free guidance (Ho & Salimans 2022)
            # One model for p(x | c) and p(x): some videos get the null condition, a zero vector (CondLayerNorm biases).
            cond = cond * (torch.rand(B, 1, device=cond.device) >= cfg.cond_dropout)
        tokens = rearrange(codes, 'B t h w -> B (t h w)')
        if cfg.causal:  # shift right by one: the start token first, the last code never goes in
            x, target = torch.cat([self.sos.expand(B, 1, -1), self.tok_emb(tokens[:, :-1])], dim=1), tokens
        else:  # MAGVIT, below: [MASK] in place of some codes, the loss on those only
            x, target = masked_inputs(self, tokens, mask)
        x = self.drop(x + rearrange(self.pos_emb(), 't h w D -> (t h w) D'))
        logits = self.head(self._trunk(x, cond, self._frame_kv(frames)))
        loss = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=-100)
        return logits.view(*codes.shape, cfg.n_codes), loss

    @torch.no_grad()
    def sample(self, n, frames=None, cond=None, temperature=1.0, top_k=None, top_p=None, generator=None,
               return_logits=False, guidance=1.0, given=None, given_mask=None, steps=None, n_latent_frames=None):
        """n code grids (n, t, h, w) int64, a token a step with a KV cache. top_k=1: greedy; return_logits adds (n, t,
        h, w, K); guidance g: logits u + g (c - u); given codes stay where given_mask (t, h, w) or (n, t, h, w) is True
        (a prefix). n_latent_frames > t: sample_long; masked priors: sample_masked in `steps` passes."""
        check_knobs(self.config, temperature, top_k, top_p, steps, guidance, return_logits)
        knobs = dict(temperature=temperature, generator=generator, given=given, given_mask=given_mask)
        if n_latent_frames not in (None, self.config.latent_shape[0]):
            return self.sample_long(n, n_latent_frames, frames, cond, top_k=top_k, top_p=top_p, guidance=guidance,
                                    steps=steps, **knobs)
        if not self.config.causal:
            return self.sample_masked(n, frames, cond, steps, **knobs)
        frames, cond, given, given_mask = check_sampling_inputs(self, n, frames, cond, given, given_mask, guidance)
        cfg, L, guided, was_training = self.config, self.config.block_size, guidance != 1.0, self.training
        if guided:  # one batch of 2n: the n videos under their condition, then under the null condition
            cond = torch.cat([cond, torch.zeros_like(cond)])
            frames = None if frames is None else torch.cat([frames, frames])
        self.eval()
        hd = cfg.n_embd // cfg.n_head  # caches (2, n or 2n, nh, L, hd); new_empty: the weights' dtype and device
        caches = [self.sos.new_empty(2, n * (1 + guided), cfg.n_head, L, hd) for _ in self.blocks]
        frame_kv = self._frame_kv(frames)  # the frames' features: computed once, not once per token
        pos_emb = rearrange(self.pos_emb(), 't h w D -> (t h w) D')
        all_logits = torch.empty(n, L, cfg.n_codes, device=self.sos.device) if return_logits else None
        p = 0 if given is None else int(given_mask[0].sum())  # given codes: a raster prefix (check_sampling_inputs)
        codes = given.clone() if p else torch.zeros(n, L, dtype=torch.long, device=self.sos.device)  # (n, L)
        # The start token and the prefix go in as one chunk, so their keys and values fill the cache in a single pass.
        x = torch.cat([self.sos.expand(n, 1, -1), self.tok_emb(codes[:, :p])], dim=1).repeat(1 + guided, 1, 1)
        for i in range(p, L):
            start = i if i > p else 0  # the cache holds positions < start: the first pass fills it with the prefix
            h = self._trunk(x + pos_emb[start:i + 1], cond, frame_kv, caches, pos=start)  # (n or 2n, i+1-start, D)
            logits = self.head(h if return_logits else h[:, -1:]).float()  # (n or 2n, i+1-start or 1, K)
            if guided:
                c, u = logits.chunk(2)
                logits = u + guidance * (c - u)
            if return_logits:
                all_logits[:, start:i + 1] = logits
            codes[:, i] = sample_logits(logits[:, -1], temperature, top_k, top_p, generator)
            x = self.tok_emb(codes[:, i:i + 1].repeat(1 + guided, 1))      # (n or 2n, 1, D)
        self.train(was_training)
        codes = codes.view(n, *cfg.latent_shape)
        return (codes, all_logits.view(*codes.shape, -1)) if return_logits else codes


# ------------------------------------------------------------------------------------------------------------------
# MAGVIT (Yu et al. 2023): a bidirectional prior (causal=False) trained on tasks, decoded in parallel (MaskGIT)

TASKS = dict(fp='frame prediction: the first n_given latent frames', fi='frame interpolation: the first and last',
             opc='central outpainting: a central box', oph='horizontal outpainting: a central vertical band',
             opv='vertical outpainting: a central horizontal band', ipc='central inpainting: all but a central box',
             opd='dynamic outpainting: a box moving across the frames', ipd='dynamic inpainting: all but a moving box',
             uncond='unconditional generation: nothing')


def moving_box(latent_shape, seed=0):
    """(t, h, w) bool: a box of half the height and width whose corner moves linearly over the t latent frames, between
    opposite ends of the room the grid leaves it, in a direction drawn from seed (MAGVIT's dynamic tasks)."""
    t, h, w = latent_shape
    angle = 2 * math.pi * torch.rand((), generator=torch.Generator().manual_seed(seed)).item()
    centre, step = np.array([(h - h // 2) / 2, (w - w // 2) / 2]), np.array([math.sin(angle), math.cos(angle)])
    reach = min([c / abs(s) for c, s in zip(centre, step) if abs(s) > 1e-9 and c > 0], default=0.0)  # box stays in
    box = torch.zeros(latent_shape, dtype=torch.bool)
    for i in range(t):  # from centre - reach * step at the first latent frame to centre + reach * step at the last
        y, x = np.rint(centre + step * reach * (2 * i / max(1, t - 1) - 1)).astype(int)
        box[i, y:y + h // 2, x:x + w // 2] = True
    return box


def task_mask(task, latent_shape, n_given=1, seed=0):
    """(t, h, w) bool, True where `task` (TASKS) gives the tokens; boxes and bands span the central half of an axis;
    seed: the direction of the dynamic tasks' moving box."""
    t, h, w = latent_shape
    given = torch.zeros(latent_shape, dtype=torch.bool)  # as in MAGVIT, 'opc' gives a quarter of each frame
    rows, cols = slice((h - h // 2) // 2, (h + h // 2) // 2), slice((w - w // 2) // 2, (w + w // 2) // 2)
    region = dict(fp=np.s_[:n_given], fi=np.s_[[0, -1]], opc=np.s_[:, rows, cols], oph=np.s_[:, :, cols],
                  opv=np.s_[:, rows], ipc=np.s_[:, rows, cols], uncond=np.s_[:0])  # np.s_[i]: the index i itself
    need(task in TASKS, f"unknown task {task!r}: choose from {', '.join(TASKS)}")
    given[moving_box(latent_shape, seed) if task in ('opd', 'ipd') else region[task]] = True  # a bool mask indexes too
    given = ~given if task in ('ipc', 'ipd') else given  # inpainting generates the box that outpainting gives
    if task != 'uncond' and (given.all() or not given.any() or n_given < 1):
        raise ValueError(f"task {task!r} (n_given={n_given}) on a {t}x{h}x{w} latent grid leaves nothing to "
                         f"{'generate' if given.all() else 'condition on'}: use a larger grid or another task")
    return given


def draw_task_masks(tasks, latent_shape, B, device=None):
    """(B, L) bool given tokens: one task per video drawn from `tasks`; 'fp' gives 1..t-1 latent frames at random,
    'opd' and 'ipd' move their box in a random direction."""
    picks = torch.randint(len(tasks), (B,)).tolist()
    n_given = torch.randint(1, max(2, latent_shape[0]), (B,)).tolist()
    seeds = torch.randint(2 ** 31, (B,)).tolist() if {'opd', 'ipd'} & set(tasks) else [0] * B  # else: the old draws
    return torch.stack([task_mask(tasks[k], latent_shape, n, s).flatten()
                        for k, n, s in zip(picks, n_given, seeds)]).to(device)


def lowest(scores, n):
    """(B, L) bool, True at each row's n[b] lowest scores. argsort gives the order, a second argsort each entry's
    rank in it (0 = lowest): a per-row top-n without a loop over the batch, where n differs from row to row."""
    return scores.argsort(1).argsort(1) < n[:, None]


def schedule_mask(given, r):
    """MaskGIT's mask, given (B, L) bool, r (B,) in [0, 1) -> (B, L): max(1, ceil(N cos(pi r / 2))) of N not given."""
    n = (~given).sum(1)                                                                        # (B,) N
    n_mask = torch.ceil(n * torch.cos(math.pi / 2 * r)).long().clamp(min=1).minimum(n)      # (B,)
    # Random scores, given tokens scored 2 so that they rank last: the mask falls on n_mask tokens not given.
    return lowest(torch.rand(given.shape, device=given.device).masked_fill(given, 2.0), n_mask)


def masked_inputs(gpt, tokens, mask=None):
    """Training inputs of a masked prior: tokens (B, L) -> (embeddings (B, L, D), targets (B, L), -100 = no loss).
    mask (B, t, h, w) True where a token becomes [MASK]; by default a task per video, then schedule_mask."""
    cfg, B, dev = gpt.config, tokens.shape[0], tokens.device
    mask = (schedule_mask(draw_task_masks(cfg.tasks, cfg.latent_shape, B, dev), torch.rand(B, device=dev))
            if mask is None else rearrange(mask, 'B t h w -> B (t h w)'))  # (B, L)
    # MAGVIT's COMMIT mixes given tokens into [MASK] ones against copying; with only real codes given, no gain.
    x = gpt.tok_emb(tokens.masked_fill(mask, cfg.n_codes))  # given tokens go in as plain code embeddings
    return x, tokens.masked_fill(~mask, -100)  # cross_entropy ignores -100: only masked tokens count


@torch.no_grad()
def sample_masked(gpt, n, frames=None, cond=None, steps=None, temperature=1.0, choice_temperature=4.5,
                  generator=None, given=None, given_mask=None):
    """(n, t, h, w) codes by MaskGIT decoding (Chang et al. 2022), `steps` passes (default 12), causal=False; given
    ones stay. Also a method: gpt.sample_masked(n, ...)."""
    need(not gpt.config.causal, "sample_masked needs a bidirectional prior: build it with GPTConfig(causal=False)")
    check_knobs(gpt.config, temperature, steps=steps)
    steps = 12 if steps is None else steps  # MaskGIT's choice for its 256-token images
    frames, cond, given, given_mask = check_sampling_inputs(gpt, n, frames, cond, given, given_mask)
    cfg, dev, was_training = gpt.config, gpt.sos.device, gpt.training
    L, MASK = cfg.block_size, cfg.n_codes  # the [MASK] id: every token not given starts as one
    gpt.eval()
    tokens = (torch.full((n, L), MASK, dtype=torch.long, device=dev) if given is None else
              torch.where(given_mask, given.to(dev), MASK))  # (n, L): the given codes, [MASK] elsewhere
    n_unknown = (tokens == MASK).sum(1)                                            # (n,)
    frame_kv, pos_emb = gpt._frame_kv(frames), rearrange(gpt.pos_emb(), 't h w D -> (t h w) D')
    for s in range(steps):
        masked = tokens == MASK
        logits = gpt.head(gpt._trunk(gpt.tok_emb(tokens) + pos_emb, cond, frame_kv)).float()  # (n, L, K)
        draw = sample_logits(logits.view(n * L, -1), temperature, generator=generator).view(n, L)
        logp = F.log_softmax(logits, -1).gather(-1, draw[..., None])[..., 0]  # untempered: at 0, every argmax's is 0
        # MaskGIT's confidence, log p + Gumbel noise annealed to 0: early steps commit to more varied positions.
        u = torch.rand(n, L, generator=generator, device=dev).clamp_(1e-20, 1 - 1e-7)  # log(0) is -inf
        noise = -torch.log(-torch.log(u)) * choice_temperature * (1 - (s + 1) / steps)
        confidence = (logp + noise).masked_fill(~masked, float('inf'))  # decided tokens are never re-masked
        tokens = torch.where(masked, draw, tokens)
        n_keep = (n_unknown * math.cos(math.pi / 2 * (s + 1) / steps)).floor().long()  # (n,), 0 at the end
        tokens = tokens.masked_fill(lowest(confidence, n_keep), MASK)  # the n_keep least confident go back
    gpt.train(was_training)
    return tokens.view(n, *cfg.latent_shape)


# ==================================================================================================================
# PART II. TOOLS
# ==================================================================================================================
# Long videos by a sliding window (TATS, Ge et al. 2022; in neither paper), sampling to files, prediction, completion,
# and `evaluate`, the models' scores (the scores of videos, psnr, ssim, fvd, ..., are data.py's, importable here)

def decode_long(vqvae, codes):
    """codes (B, t', h, w), t' > t -> (B, C, t' * d, H, W), each frame from the window it is most central in."""
    t, d, n = vqvae.config.latent_shape[0], vqvae.config.downsample[0], codes.shape[1]
    starts = sorted(set(range(0, n - t, max(1, t // 2))) | {n - t})  # half-overlapping: context on both sides
    windows = [vqvae.decode(codes[:, s:s + t]) for s in starts]
    nearest = [min((k for k, s in enumerate(starts) if s <= i < s + t), key=lambda k: abs(starts[k] + (t - 1) / 2 - i))
               for i in range(n)]  # for latent frame i, the window whose centre is nearest
    return torch.cat([windows[k][:, :, (i - starts[k]) * d:(i - starts[k] + 1) * d] for i, k in enumerate(nearest)], 2)


@torch.no_grad()
def sample_long(gpt, n, n_latent_frames, frames=None, cond=None, **sampling):
    """(n, n_latent_frames, h, w) codes past the window t by TATS's sliding window; frames, cond: every window."""
    t, shape = gpt.config.latent_shape[0], gpt.config.latent_shape
    need(t >= 2 and n_latent_frames >= t, f"n_latent_frames={n_latent_frames}: sliding needs a prior of at least 2 "
         f"latent frames (this one has {t}) and at least {t} frames")
    codes = gpt.sample(n, frames, cond, **sampling)  # given tokens, if any, apply to this first window only
    out, context = [codes], task_mask('fp', shape, t - 1).to(codes.device)  # t - 1 latent frames given, 1 sampled
    for _ in range(n_latent_frames - t):  # one latent frame per slide, the last t - 1 re-encoded: positions shift
        codes = gpt.sample(n, frames, cond, **dict(sampling, given=codes.roll(-1, dims=1), given_mask=context))
        out.append(codes[:, -1:])  # roll: the last t - 1 frames move to the front; the wrapped one is replaced
    return torch.cat(out, dim=1)


# Methods too: vqvae.decode hands long codes to decode_long, gpt.sample long videos and masked priors to these two.
VQVAE.decode_long, VideoGPT.sample_long, VideoGPT.sample_masked = decode_long, sample_long, sample_masked


@torch.no_grad()
def sample_videos(gpt_path, n=8, out='samples.gif', frames=None, cond=None, seed=0, nrow=None, vqvae_path='',
                  **sampling):
    """Sample n videos from a prior checkpoint and its VQ-VAE (find_vqvae) and write a GIF/MP4."""
    device, vqvae_path = setup_device()[0], find_vqvae(gpt_path, vqvae_path)
    gpt, vqvae = load_model(gpt_path, 'gpt').to(device), load_model(vqvae_path, 'vqvae').to(device)
    codes = gpt.sample(n, frames, cond, generator=torch.Generator(device).manual_seed(seed), **sampling)
    video = vqvae.decode(codes).clamp(-0.5, 0.5).cpu()
    if frames is not None:  # show the given conditioning frames in place of their reconstruction
        video[:, :, :frames.shape[2]] = frames
    data.save_video_grid(video, out, nrow=nrow)
    return video


@torch.no_grad()
def complete_video(vqvae, gpt, video, task, n_given=1, frames=None, cond=None, generator=None, **sampling):
    """Video (B, C, T, H, W) -> (completed video (B, C, T, H, W), given pixels (T, H, W) bool): `task` gives tokens."""
    given_mask = task_mask(task, data.check_pair(vqvae, gpt).latent_shape, n_given).to(video.device)
    codes = gpt.sample(len(video), frames, cond, generator=generator, given=vqvae.encode(video),
                       given_mask=given_mask, **sampling)
    a, b, c = vqvae.config.downsample  # each latent cell covers a x b x c pixels
    return vqvae.decode(codes).clamp(-0.5, 0.5), repeat(given_mask, 't h w -> (t a) (h b) (w c)', a=a, b=b, c=c)


@torch.no_grad()
def predict_frames(vqvae, gpt, context, n_future, cond=None, generator=None, **sampling):
    """Real frames context (B, C, T0, H, W) -> n_future predicted frames (B, C, n_future, H, W), sliding if needed."""
    vc, gc, T0 = data.check_pair(vqvae, gpt), gpt.config, context.shape[2]  # the prior must be this VQ-VAE's
    check_prediction(vc, gc, T0, n_future)
    t, d, T = vc.latent_shape[0], vc.downsample[0], vc.sequence_length
    s = max(0, T0 - (t - 1) * d)  # the window's first frame: a latent frame is left to sample
    if T0 >= T and t > 1 and not gc.n_cond_frames:  # a whole window of real frames: its codes, as in training
        codes = vqvae.encode(context[:, :, T0 - T:])  # (B, t, h, w); the encoder mixes a window's frames
        given = dict(given=codes.roll(-1, dims=1), given_mask=task_mask('fp', vc.latent_shape, t - 1))
        codes = gpt.sample(len(context), None, cond, generator=generator, n_latent_frames=t - 1 - (-n_future // d),
                           **given, **sampling)  # its last t - 1 latent frames given, then one sampled per slide
        return vqvae.decode(codes)[:, :, (t - 1) * d:(t - 1) * d + n_future].clamp(-0.5, 0.5)
    clip, n_given = context[:, :, s:], (T0 - s) // d  # a short context: its whole latent frames, the rest padded
    padded = torch.cat([clip, clip[:, :, -1:].expand(-1, -1, T - clip.shape[2], -1, -1)], dim=2)  # last frame copies
    given = dict(given=vqvae.encode(padded), given_mask=task_mask('fp', vc.latent_shape, n_given)) if n_given else {}
    frames = clip[:, :, :gc.n_cond_frames] if gc.n_cond_frames else None  # the window's first, as in training
    n_latent = max(t, -(-(T0 - s + n_future) // d))  # latent frames that reach the last predicted frame
    codes = gpt.sample(len(context), frames, cond, generator=generator, n_latent_frames=n_latent, **given, **sampling)
    return vqvae.decode(codes)[:, :, T0 - s:T0 - s + n_future].clamp(-0.5, 0.5)


@torch.no_grad()
def evaluate(vqvae, gpt, video, cond=None, batch_size=16):
    """Held-out scores of videos (N, C, T, H, W) in [-0.5, 0.5], cond (N, ...) if the prior takes one: reconstruction
    (PSNR capped at 100 dB as psnr(); NMSE nan for constant videos), codebook_stats, bits per token."""
    check_scored_videos(video, cond, batch_size, vqvae, gpt)
    modes = {m: m.training for m in (vqvae, gpt) if m is not None}  # eval mode (the codebook stays still), restored
    for m in modes:
        m.eval()
    device, sq, nats, ssim_sum = next(vqvae.parameters()).device, 0.0, 0.0, 0.0
    counts = torch.zeros(vqvae.config.n_codes, dtype=torch.long)
    conds = [None] * len(video) if cond is None else cond.split(batch_size)
    for x, c in zip(video.split(batch_size), conds):
        x = x.to(device)
        out = vqvae(x)
        x_hat = out['x_hat'].clamp(-0.5, 0.5)
        counts += torch.bincount(out['codes'].flatten().cpu(), minlength=len(counts))
        sq += F.mse_loss(x_hat, x, reduction='sum').item()
        ssim_sum += ssim(x_hat, x).sum().item() if min(x.shape[-2:]) >= 11 else math.nan  # needs 11x11 frames
        if gpt is not None:
            frames = x[:, :, :gpt.config.n_cond_frames] if gpt.config.n_cond_frames else None
            nats += gpt(out['codes'], frames, c)[1].item() * len(x)
    for m, mode in modes.items():
        m.train(mode)
    mse, var, (perplexity, usage) = sq / video.numel(), video.float().var().item(), map(float, codebook_stats(counts))
    scores = dict(psnr=10 * math.log10(1 / max(mse, 1e-10)), ssim=ssim_sum / len(video),
                  nmse=mse / var if var else math.nan, perplexity=perplexity, usage=usage)
    if gpt is not None:
        scores.update(bits_per_token=nats / len(video) / math.log(2), uniform_bits=math.log2(gpt.config.n_codes))
    return scores


# ------------------------------------------------------------------------------------------------------------------
# Presets: the paper's settings (appendix tables; the authors' VideoGPT-Paper configs where the tables are silent),
# checkpoints and pretrained weights, and MAGVIT's 3D inflation: a video tokenizer from an image one (section 3.1)

_RGB = dict(in_channels=3, n_res_layers=4, embedding_dim=256, n_codes=1024)  # the VQ-VAE for BAIR and for UCF-101
_BAIR = dict(n_embd=512, n_head=4, n_layer=8, dropout=0.2, n_cond_frames=1, frame_channels=3, cond_dim=64)
PRESETS = {  # name: (VQVAEConfig overrides, GPTConfig overrides)
    'mnist': (dict(), dict()),  # the dataclass defaults: 16x64x64 grey -> 4x16x16 codes
    'bair-8x32x32': (dict(_RGB, downsample=(2, 2, 2)), _BAIR),  # BAIR 16x64x64 RGB, first frame, actions: the best
    'bair-4x32x32': (dict(_RGB, downsample=(4, 2, 2)), _BAIR),  # the same, its codes 4x32x32
    'ucf101': (dict(_RGB, resolution=128, downsample=(4, 4, 4)),  # 16x128x128 RGB -> 4x32x32, 101 classes
               dict(n_embd=1024, n_head=8, n_layer=20, dropout=0.2, cond_dim=101)),
    'mnist-cpu': (dict(sequence_length=8, downsample=(2, 8, 8), n_hiddens=64, n_codes=512),  # two digits, 4x8x8 codes:
                  dict(n_embd=256, n_head=4, n_layer=6, dropout=0.0)),  # 256 tokens, few enough for 5M weights on a CPU
    # Minutes on 2 CPU cores: one digit, 8 frames -> 4x8x8 codes, class-conditional; the narrowest that kept digits.
    'demo': (dict(sequence_length=8, downsample=(2, 8, 8), n_hiddens=48, n_res_layers=1, n_codes=128),
             dict(n_embd=128, n_head=2, n_layer=4, dropout=0.0, cond_dim=10, cond_dropout=0.1)),
}


def fit_prior(gcfg, vcfg):
    """gcfg with what must match the VQ-VAE taken from vcfg: its codes, and the size of the conditioning frames."""
    return replace(gcfg, n_codes=vcfg.n_codes, latent_shape=vcfg.latent_shape, frame_channels=vcfg.in_channels,
                   frame_size=vcfg.resolution)


def preset_configs(name):
    """(VQVAEConfig, GPTConfig) of a preset, with the prior fitted to the VQ-VAE's codes."""
    need(name in PRESETS, f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    vcfg = VQVAEConfig(**PRESETS[name][0])
    return vcfg, fit_prior(GPTConfig(**PRESETS[name][1]), vcfg)


def load_model(path, kind=None):
    """A VQVAE or VideoGPT from its checkpoint (of `kind`, if given), in eval mode."""
    ckpt = load_checkpoint(path, kind)
    cls, cfg_cls = (VQVAE, VQVAEConfig) if ckpt['kind'] == 'vqvae' else (VideoGPT, GPTConfig)
    model = cls(cfg_cls(**ckpt['config']))
    model.load_state_dict(ckpt['model'])
    return model.eval()


PRETRAINED = {  # name: {file in weights/NAME/: sha256}, made by the README's Results commands (VQ-VAE first)
    'moving-mnist': {'vqvae.pt': 'cc5f3e300578073d1c07ffb30b4515b14ab0940061db0835c41a0e16b9503c67',
                     'gpt.pt': '6e77315b54bce589b1ba398f0e085906e0b31ebc06a74f3124165d691e9f3f16'}}


def load_pretrained(name='moving-mnist', device='cpu'):
    """(vqvae, gpt) in eval mode from the weights committed under weights/NAME/: the bytes whose sha256 was checked."""
    need(name in PRETRAINED, f"no pretrained weights named {name!r}: choose one of {', '.join(PRETRAINED)}")
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'weights', name)
    return tuple(load_model(path).to(device) for path in data.checked_files(folder, PRETRAINED[name]))


@torch.no_grad()
def inflate_from_2d(vqvae, state_dict_2d, mode='central'):
    """Load into vqvae (3D) the weights of a VQ-VAE trained on single frames (VQVAEConfig(sequence_length=1), else
    the same sizes and stages): each 2D kernel is its time-centre slice; 'central' puts it at the time centre of the
    3D kernel, zeros elsewhere (two taps for a transposed stride-2 kernel, which reach alternate output frames);
    'average' spreads it evenly over the taps an output sums. Time position embeddings repeat the single frame's."""
    need(mode in ('central', 'average'), f"mode={mode!r}: use 'central' or 'average'")
    target = vqvae.state_dict()
    for name, w in state_dict_2d.items():
        need(name in target, f"{name} is not in this VQ-VAE: the 2D one must have the same sizes and stages")
        want = target[name]
        if w.ndim == 5 and w.shape[2] == 3 and w.shape[:2] + w.shape[3:] == want.shape[:2] + want.shape[3:]:
            # A 3-tap time kernel that only ever saw one frame and zero padding: its centre slice is the 2D kernel.
            kt, transposed = want.shape[2], isinstance(vqvae.get_submodule(name.rsplit('.', 1)[0]), nn.ConvTranspose3d)
            taps = ([1, 2] if transposed and kt == 4 else [(kt - 1) // 2]) if mode == 'central' else list(range(kt))
            share = 1 if mode == 'central' else kt / (2 if transposed else 1)  # a stride-2 transposed output sums 2
            centre = w[:, :, 1:2].expand_as(want[:, :, taps]) / share  # the 2D kernel on each chosen tap
            w = torch.zeros_like(want).index_copy_(2, torch.tensor(taps), centre)
        elif name.endswith('pos.tables.0') and w.shape[0] == 1 and w.shape[1:] == want.shape[1:]:  # (1, D) to (t, D)
            w = w.expand_as(want)
        elif w.shape != want.shape:
            raise ValueError(f"{name}: 2D {tuple(w.shape)} cannot inflate to {tuple(want.shape)}: same sizes, stages")
        target[name] = w.to(want.dtype)
    vqvae.load_state_dict(target)
    return vqvae


# ==================================================================================================================
# PART III. TRAINING AND THE COMMAND LINE
# ==================================================================================================================
# Training: one loop for both stages, in plain PyTorch

@dataclass
class TrainConfig:
    out_dir: str = 'runs/vqvae'
    steps: int = 20_000
    batch_size: int = 16             # per process
    lr: float = 3e-4
    warmup: int = 500                # linear warmup steps, then cosine decay to lr / 10
    weight_decay: float = 0.01       # on matrices and embeddings only (not on norms or biases)
    grad_clip: float = 1.0
    log_every: int = 50              # metrics.jsonl and the loss curve
    sample_every: int = 1000         # a sample GIF / reconstruction image
    ckpt_every: int = 1000
    seed: int = 0
    num_workers: int = 2
    compile: bool = False            # torch.compile the model (the checkpoint always holds the plain module)
    resume: bool = False             # continue from out_dir/ckpt.pt
    overwrite: bool = False          # start over in an out_dir that holds a checkpoint (else: refused)
    dataset: str = 'mnist'           # mnist | bair | folder
    data_dir: str = ''               # converted BAIR folder, or a folder of videos
    mnist_dir: str = ''              # folder with the MNIST .gz files (default: cache, download, font fallback)
    n_digits: int = 2                # digits per Moving MNIST video
    dataset_size: int = 0            # Moving MNIST training videos: 0 draws a fresh one for every item; N fixes N
    vqvae: str = ''                  # train-gpt: the VQ-VAE checkpoint whose codes the prior models
    codes_file: str = ''             # train-gpt: encode a fixed-size dataset once into this file and train on it
    init_from: str = ''              # train-gpt: start from this prior's weights (init_prior: may add conditioning)
    perceptual_net: str = ''         # train-vqvae: a TorchScript feature network, (N, 3, H, W) in [-1, 1] -> features

    def __post_init__(self):
        check_train_config(self)  # counts >= 1, rates > 0, a seed numpy takes


def setup_device():
    """(device, rank, world size, autocast dtype or None, GradScaler needed) for this process."""
    rank, world = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))
    if world > 1 and not dist.is_initialized():  # launched by torchrun
        dist.init_process_group('nccl' if torch.cuda.is_available() else 'gloo')
    if torch.cuda.is_available():
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        # bf16 keeps fp32's exponent range and needs no loss scaling; older GPUs get fp16 with a GradScaler.
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
        return device, rank, world, dtype, dtype == torch.float16
    torch.set_flush_denormal(True)  # tiny attention weights (denormals) as 0: they slowed masked priors' steps 2.5x
    return torch.device('cpu'), rank, world, None, False  # fp32 on CPU: CPU autocast is slower, not faster


def lr_at(step, tcfg):
    """Linear warmup for tcfg.warmup steps, then cosine decay from lr to lr / 10 at the last step."""
    if step < tcfg.warmup:
        return tcfg.lr * (step + 1) / tcfg.warmup
    progress = min(1.0, (step - tcfg.warmup) / max(1, tcfg.steps - tcfg.warmup))
    return tcfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, tcfg, device):
    """AdamW with weight decay on matrices and embeddings only (not norms, biases); fused: one kernel per step."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [dict(params=[p for p in params if p.ndim >= 2], weight_decay=tcfg.weight_decay),
              dict(params=[p for p in params if p.ndim < 2], weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=tcfg.lr, betas=(0.9, 0.95), fused=device.type in ('cuda', 'cpu'))


def rng_states(device, world):
    """Every rank's RNG state (CPU, then CUDA on GPUs), gathered: a resume continues dropout and code restarts."""
    rng = torch.cat([torch.get_rng_state()] + ([torch.cuda.get_rng_state(device)] if device.type == 'cuda' else []))
    if world == 1:
        return [rng]
    rngs = [torch.empty_like(rng, device=device) for _ in range(world)]
    dist.all_gather(rngs, rng.to(device))
    return [r.cpu() for r in rngs]


def resume_run(ckpt_path, kind, model, model_cfg, opt, scaler, tcfg, aux=None):
    """(step, log) to start from: a fresh run, or the checkpoint's state loaded into model, opt and scaler."""
    if os.path.exists(ckpt_path) and not (tcfg.resume or tcfg.overwrite):  # never replace a run without being asked
        raise FileExistsError(f"{ckpt_path} exists: pass --resume true, --overwrite true or another --out-dir")
    if not (tcfg.resume and os.path.exists(ckpt_path)):
        return 0, []
    ckpt = load_checkpoint(ckpt_path, kind)
    saved = asdict(type(model_cfg)(**{**asdict(model_cfg), **ckpt['config']}))  # tuples again; newer fields: ours
    changed = ', '.join(f"{k}={saved[k]}" for k, v in asdict(model_cfg).items() if saved[k] != v)
    # Said here: a size mismatch deep in load_state_dict would not say which setting differs.
    need(not changed, f"{ckpt_path} was trained with {changed}: resume with those settings, or --overwrite true")
    for obj, key in ((model, 'model'), (opt, 'optimizer'), (scaler, 'scaler')):
        obj.load_state_dict(ckpt[key])
    for name, obj in (aux or {}).items():  # a discriminator and its optimizer, where step_fn trains one
        need(name in ckpt.get('aux', {}), f"{ckpt_path} holds no {name}: resume with the settings it was trained with")
        obj.load_state_dict(ckpt['aux'][name])
    rng, n_cpu = ckpt['rng'][dist.get_rank() % len(ckpt['rng']) if _is_dist() else 0], len(torch.get_rng_state())
    torch.set_rng_state(rng[:n_cpu])  # then CUDA's, where rng_states saved it
    if len(rng) > n_cpu and next(model.parameters()).is_cuda:
        torch.cuda.set_rng_state(rng[n_cpu:], next(model.parameters()).device)
    print(f"resumed {ckpt_path} at step {ckpt['step']}")
    return ckpt['step'], ckpt['log']


def train(model, kind, step_fn, dataset, tcfg, model_cfg, on_sample=None, extra=None, on_log=None, aux=None):
    """Train and return model: step_fn(model, batch) -> (loss, metrics); hooks on_sample(model, step), on_log(log);
    aux: {name: module or optimizer} that step_fn trains itself (a discriminator), saved and resumed with the model."""
    device, rank, world, dtype, use_scaler = setup_device()
    files = rank == 0 and bool(tcfg.out_dir)  # only rank 0 writes, and out_dir '' writes nothing
    ckpt_path, aux, extra = os.path.join(tcfg.out_dir, 'ckpt.pt'), aux or {}, extra or {}
    torch.manual_seed(tcfg.seed + rank)
    for m in (model, *aux.values()):
        m.to(device) if isinstance(m, nn.Module) else None
    opt, scaler = make_optimizer(model, tcfg, device), torch.amp.GradScaler(device.type, enabled=use_scaler)
    step, log = resume_run(ckpt_path, kind, model, model_cfg, opt, scaler, tcfg, aux) if tcfg.out_dir else (0, [])
    if files:  # the log as of the checkpoint: rows written after it, before an interruption, are replayed
        os.makedirs(tcfg.out_dir, exist_ok=True)
        data.write_jsonl(os.path.join(tcfg.out_dir, 'metrics.jsonl'), log)
    # DDP averages gradients; the codebook all-reduces its own buffers, so DDP must not overwrite them with rank 0's.
    fwd = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False) if world > 1 else model
    fwd = torch.compile(fwd) if tcfg.compile else fwd
    data_iter, t0 = data.batches(dataset, tcfg, step, rank), time.time()  # batch s: (seed, s, rank) only, resumable
    with tqdm(total=tcfg.steps, initial=step, disable=rank != 0 or None, desc=kind) as bar:  # None: terminals only
        while step < tcfg.steps:
            model.train()
            batch = {k: v.to(device, non_blocking=True) for k, v in next(data_iter).items()}
            for group in opt.param_groups:
                group['lr'] = lr_at(step, tcfg)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss, metrics = step_fn(fwd, batch)
            if not torch.isfinite(loss):  # stop before the bad step touches the weights or the last checkpoint
                raise FloatingPointError(f"loss is {loss.item()} at step {step}; {ckpt_path} holds the last good "
                                         "state: lower --lr, raise --warmup or keep --grad-clip 1, then --resume")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            step += 1
            bar.update(1)
            if step % tcfg.log_every == 0 or step == tcfg.steps:
                log.append(dict(step=step, loss=loss.item(), lr=lr_at(step - 1, tcfg), time=round(time.time() - t0, 1),
                                **{k: float(v.detach()) for k, v in metrics.items()}))
                bar.set_postfix({k: f"{v:.3g}" for k, v in log[-1].items() if k not in ('step', 'time', 'lr')})
                if files:
                    data.write_jsonl(os.path.join(tcfg.out_dir, 'metrics.jsonl'), log[-1:], mode='a')
                if on_log and rank == 0:
                    on_log(log)
            if files and on_sample and (step % tcfg.sample_every == 0 or step == tcfg.steps):
                on_sample(model, step)
            if tcfg.out_dir and (step % tcfg.ckpt_every == 0 or step == tcfg.steps):
                rng = rng_states(device, world)  # a collective under DDP: every rank takes part
                if files:
                    save_checkpoint(ckpt_path, kind=kind, config=asdict(model_cfg), model=model.state_dict(),
                                    optimizer=opt.state_dict(), scaler=scaler.state_dict(), step=step, log=log, rng=rng,
                                    train_config=asdict(tcfg), aux={k: v.state_dict() for k, v in aux.items()}, **extra)
                    if log:
                        data.plot_metrics(os.path.join(tcfg.out_dir, 'loss.png'), log)
                if world > 1:  # no rank goes on before rank 0's checkpoint is on disk: a resume must find it
                    dist.barrier()
    return model


def vqvae_step(model, batch):
    out = model(batch['video'])
    return out['loss'], dict(recon=out['recon_loss'], perplexity=out['perplexity'], usage=out['usage'])


class Discriminator(nn.Module):
    """MAGVIT's tokenizer adversary: video (B, C, T, H, W) -> (B,) realness logits. StyleGAN's residual discriminator
    inflated to 3D, simplified: no blur before its strided convolutions, no minibatch deviation, no equalised learning
    rate, three blocks from width 16: at 64x64 these buy little and cost most of the step on a CPU."""
    def __init__(self, cfg, width=16, n_blocks=3):
        super().__init__()
        self.stem, self.blocks = nn.Conv3d(cfg.in_channels, width, 3, padding=1), nn.ModuleList()
        t = cfg.sequence_length
        for i in range(n_blocks):  # each halves h and w (t while it can) and doubles the width
            c, stride, t = width * 2 ** i, (2 if t > 1 else 1, 2, 2), max(1, t // 2)
            down, skip = strided_conv(c, 2 * c, stride), nn.Conv3d(c, 2 * c, 1, stride)  # skip: the shortcut, 1x1x1
            self.blocks.append(nn.ModuleDict(dict(conv=nn.Conv3d(c, c, 3, padding=1), down=down, skip=skip)))
        self.head = nn.Linear(width * 2 ** n_blocks, 1)
        self.register_buffer('ema_real', torch.tensor(0.0))  # LeCam's anchors: EMAs of the outputs on real and fake
        self.register_buffer('ema_fake', torch.tensor(0.0))
        self.register_buffer('steps', torch.tensor(0))       # steps taken: the warm-up's clock, resumed with it

    def forward(self, x):
        x = F.leaky_relu(self.stem(x), 0.2)
        for b in self.blocks:  # residual, / sqrt 2 to keep the variance (StyleGAN)
            x = (F.leaky_relu(b.down(F.leaky_relu(b.conv(x), 0.2)), 0.2) + b.skip(x)) / math.sqrt(2)
        return self.head(x.mean((2, 3, 4)))[:, 0]


def lecam(d_real, d_fake, disc, decay=0.99):
    """LeCam regularisation (Tseng et al. 2021, eq. 3): mean (D(x) - a_F)^2 + mean (D(G(z)) - a_R)^2, a_R and a_F the
    EMAs of D's outputs on real and fake videos (decay 0.99, as LeCam's code), then moved to this batch's means."""
    reg = (d_real - disc.ema_fake).pow(2).mean() + (d_fake - disc.ema_real).pow(2).mean()
    disc.ema_real.lerp_(d_real.detach().mean().float(), 1 - decay)
    disc.ema_fake.lerp_(d_fake.detach().mean().float(), 1 - decay)
    return reg


def tokenizer_step(disc, disc_opt, cfg, perceptual_net=None):
    """vqvae_step plus MAGVIT's losses, a step_fn for train. After cfg.gan_warmup steps, the discriminator first takes
    a step of its own (logistic loss on real against reconstructed videos, + lecam_weight * LeCam), then the VQ-VAE's
    loss gains gan_weight * the non-saturating generator loss; perceptual_net adds perceptual_weight * the MSE of
    each frame's features (frames (N, 3, H, W) in [-1, 1])."""
    frames = lambda v: rearrange(v, 'B C T H W -> (B T) C H W').expand(-1, 3, -1, -1) * 2  # noqa: E731
    def step(model, batch):
        x = batch['video']
        out = model(x)
        x_hat, loss, metrics = out['x_hat'], out['loss'], dict(recon=out['recon_loss'], usage=out['usage'])
        if perceptual_net is not None:
            p = F.mse_loss(perceptual_net(frames(x_hat)), perceptual_net(frames(x)).detach())
            loss, metrics['perceptual'] = loss + cfg.perceptual_weight * p, p.detach()
        if cfg.gan_weight and disc.steps >= cfg.gan_warmup:
            d_real, d_fake = disc(x), disc(x_hat.detach())
            d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()  # logistic: real -> +, reconstructed -> -
            d_loss = d_loss + cfg.lecam_weight * lecam(d_real, d_fake, disc)
            disc_opt.zero_grad(set_to_none=True)  # also drops what the last generator loss left on its weights
            d_loss.backward()
            disc_opt.step()
            g = F.softplus(-disc(x_hat)).mean()
            loss, metrics['disc'], metrics['gan'] = loss + cfg.gan_weight * g, d_loss.detach(), g.detach()
        disc.steps.add_(1)
        return loss, metrics
    return step


def train_vqvae(vcfg, tcfg, dataset=None, init=None):
    """Stage 1: train a VQ-VAE on tcfg.dataset, from init's weights if given (say, inflate_from_2d's), else fresh
    ones; writes ckpt.pt, metrics.jsonl, loss.png and recon.png."""
    need(init is None or init.config == vcfg, "init was built with another VQVAEConfig: pass init.config as vcfg")
    dataset = dataset or data.make_dataset(tcfg, vcfg.sequence_length, vcfg.resolution)
    fixed = torch.stack([dataset[i]['video'] for i in range(min(4, len(dataset)))])  # the same ones each time

    @torch.no_grad()
    def on_sample(model, step):  # in eval mode: the codebook must not learn from these videos
        x_hat = model.eval()(fixed.to(model.pos.tables[0].device))['x_hat'].clamp(-0.5, 0.5).cpu()
        data.save_video_grid(torch.cat([fixed, x_hat]), os.path.join(tcfg.out_dir, 'recon.png'))
    torch.manual_seed(tcfg.seed)  # the same initial weights on every rank and every rerun
    model, step_fn, aux = VQVAE(vcfg) if init is None else init, vqvae_step, None
    if vcfg.gan_weight or vcfg.perceptual_weight:  # MAGVIT's losses: built after the VQ-VAE, whose init stays put
        need(bool(vcfg.perceptual_weight) == bool(tcfg.perceptual_net), PERCEPTUAL)
        net = torch.jit.load(tcfg.perceptual_net, setup_device()[0]).eval() if tcfg.perceptual_net else None
        disc = Discriminator(vcfg)
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=tcfg.lr, betas=(0.5, 0.9))  # GANs' usual lower beta1
        step_fn, aux = tokenizer_step(disc, disc_opt, vcfg, net), dict(discriminator=disc, disc_optimizer=disc_opt)
    return train(model, 'vqvae', step_fn, dataset, tcfg, vcfg, on_sample, aux=aux)


def train_gpt(gcfg, tcfg, dataset=None):
    """Stage 2: train the prior on the codes of a frozen VQ-VAE (tcfg.vqvae); writes ckpt.pt and samples.gif."""
    device = setup_device()[0]
    vqvae = load_model(tcfg.vqvae, 'vqvae').requires_grad_(False).to(device)  # frozen: eval (EMA off), no gradients
    data.check_prior_fits(gcfg, fit_prior(gcfg, vqvae.config))  # its codes, and frames if any, must be the VQ-VAE's
    gcfg = replace(gcfg, codebook=data.codebook_digest(vqvae.codebook.embeddings))  # the codes it learns: checked
    dataset = dataset or data.make_dataset(tcfg, vqvae.config.sequence_length, vqvae.config.resolution)
    if tcfg.codes_file:
        encoded = data.encode_dataset(vqvae, dataset, tcfg.codes_file, n_frames=gcfg.n_cond_frames)
        dataset = data.CodesDataset(dataset, encoded, keep_video=gcfg.n_cond_frames > 0)
    fixed = torch.utils.data.default_collate([dataset[i] for i in range(min(4, len(dataset)))])

    def step_fn(model, batch):
        codes = batch['codes'] if 'codes' in batch else vqvae.encode(batch['video'])
        loss = model(codes, *gpt_inputs(gcfg, batch))[1]  # (logits, loss)[1], given frames and cond
        return loss, dict(bits_per_token=loss.detach() / math.log(2))  # nats / ln 2; uniform guessing: log2(n_codes)

    @torch.no_grad()
    def on_sample(model, step):
        codes = model.sample(len(fixed['codes' if 'codes' in fixed else 'video']), *gpt_inputs(gcfg, fixed),
                             generator=torch.Generator(device).manual_seed(0))  # frames, cond: sample moves them
        data.save_video_grid(vqvae.decode(codes).clamp(-0.5, 0.5).cpu(), os.path.join(tcfg.out_dir, 'samples.gif'))
    torch.manual_seed(tcfg.seed)
    model = init_prior(VideoGPT(gcfg), tcfg.init_from) if tcfg.init_from else VideoGPT(gcfg)
    return train(model, 'gpt', step_fn, dataset, tcfg, gcfg, on_sample,
                 extra=dict(vqvae=os.path.abspath(tcfg.vqvae),  # a reference to stage 1, not a copy of it;
                            vqvae_rel=os.path.relpath(tcfg.vqvae, tcfg.out_dir)))  # found again after a move


# ------------------------------------------------------------------------------------------------------------------
# The command line

def _add_dataclass_args(parser, cls, skip=()):
    """One --flag per dataclass field, so the command line can override every hyper-parameter."""
    for f in (fld for fld in fields(cls) if fld.name not in skip):
        kind = type(f.default)
        kw = dict(type=strict_bool, metavar='BOOL') if kind is bool else dict(type=kind)
        if kind is tuple:  # downsample: exactly 3 ints; tasks: any number of names
            named = isinstance(f.default[0], str)
            kw = dict(type=str if named else int, nargs='+' if named else len(f.default))
        parser.add_argument('--' + f.name.replace('_', '-'), default=None, **kw)


def _fill(cfg, args):
    """A copy of the dataclass cfg with the flags that were given."""
    return replace(cfg, **{f.name: vars(args)[f.name] for f in fields(cfg) if vars(args).get(f.name) is not None})


@torch.no_grad()
def eval_command(p, args):
    """`eval`: evaluate(), --context -> --future frame prediction with a prior, FVD with --i3d; a table and a JSON."""
    t0, (vqvae, gpt, held, ds, i3d), device = time.time(), data.check_eval_args(p, args, load_model), setup_device()[0]
    vqvae, gpt, n, grid = vqvae.to(device), gpt and gpt.to(device), args.n, None
    batch = torch.utils.data.default_collate([held[i] for i in tqdm(range(n), desc='videos', disable=None)])
    real, fake, cond = batch['video'], None, gpt_inputs(gpt.config, batch, null=True)[1] if gpt else None  # fake: FVD's
    scores = dict(videos=n, **evaluate(vqvae, gpt, real, cond, args.batch_size))
    classes, reader = data.two_digit_classes(held, n), data.load_digit_reader()  # two-digit Moving MNIST: read it
    if classes is not None or (i3d and ds is None):  # the reconstructions, for the reader or for FVD
        fake = torch.cat([vqvae(x.to(device))['x_hat'].clamp(-0.5, 0.5).cpu() for x in real.split(args.batch_size)])
    if classes is not None:  # what a viewer sees: frames whose two digits the reader names, real frames the ceiling
        for name, v in (('real', real), ('reconstructed', fake)):
            scores.update({f'{k} {name}': s for k, s in data.digit_reading(reader, v, classes).items()})
    if ds is not None:
        T, sampling = args.context + args.future, dict(temperature=args.temperature, top_k=args.top_k, steps=args.steps)
        g, sums, real, fake = torch.Generator(device).manual_seed(args.seed), {}, [], []
        classes = data.two_digit_classes(ds, n)
        for i in tqdm(range(0, n, args.batch_size), desc='prediction', disable=None):
            b = torch.utils.data.default_collate([ds[j] for j in range(i, min(n, i + args.batch_size))])
            x, c = b['video'][:, :, :T], gpt_inputs(gpt.config, b, null=True)[1]  # unlabelled: the null condition
            pred = predict_frames(vqvae, gpt, x[:, :, :args.context].to(device), args.future, c, g, **sampling).cpu()
            data.add_prediction_sums(sums, x[:, :, :args.context], x[:, :, args.context:], pred, reader,
                                     None if classes is None else classes[i:i + len(x)])  # and two baselines'
            real.append(x), fake.append(torch.cat([x[:, :, :args.context], pred], dim=2))
        real, fake = torch.cat(real), torch.cat(fake)
        scores.update({f'{args.context}->{args.future} {k}': v / len(real) for k, v in sums.items()})
        grid = torch.cat([real[:8], fake[:8]])  # real videos on the top row, predictions below
    if i3d:
        scores['fvd'] = fvd(real, fake, i3d.to(device), args.batch_size)
    scores['seconds'] = round(time.time() - t0, 1)
    data.write_eval(args, scores, grid)  # the table, the JSON, the GIF
    return scores


def demo(p, args):
    """Both stages on Moving MNIST with the 'demo' preset, then samples.gif and recon.png in args.out_dir."""
    data.check_demo_args(p, args)
    (vcfg, gcfg), t0 = preset_configs('demo'), time.time()
    common = dict(dataset='mnist', mnist_dir=args.mnist_dir, n_digits=1, dataset_size=10_000, num_workers=0,
                  log_every=50, warmup=100, overwrite=True, batch_size=8)  # one digit: two drew scribbles (RESULTS.md)
    train_vqvae(vcfg, TrainConfig(out_dir=os.path.join(args.out_dir, 'vqvae'), steps=args.vqvae_steps,
                                  lr=args.vqvae_lr, **common))  # 600 at 2e-3: truer digits than 400 at 1e-3
    vq_path, gpt_path = (os.path.join(args.out_dir, stage, 'ckpt.pt') for stage in ('vqvae', 'gpt'))
    # lr 6e-3, not 2e-3: the zero-initialised class pathway learns faster; samples read as their digit more often.
    train_gpt(gcfg, TrainConfig(out_dir=os.path.join(args.out_dir, 'gpt'), steps=args.gpt_steps, lr=6e-3,
                                sample_every=args.gpt_steps, ckpt_every=args.gpt_steps, vqvae=vq_path,
                                codes_file=os.path.join(args.out_dir, 'codes.pt'), **dict(common, dataset_size=5000)))
    out = os.path.join(args.out_dir, 'samples.gif')  # two of each digit, 0-9 a row; temperature 0.8, guidance 3: truer
    sample_videos(gpt_path, n=20, out=out, cond=torch.arange(20) % 10, temperature=0.8, guidance=3.0, nrow=10)
    held_out = data.make_dataset(TrainConfig(mnist_dir=args.mnist_dir, n_digits=1), vcfg.sequence_length,
                                 vcfg.resolution, train=False)  # digits that training never saw (data.mnist_digits)
    batch = torch.utils.data.default_collate([held_out[i] for i in range(64)])
    scores = evaluate(load_model(vq_path), load_model(gpt_path), batch['video'], batch['label'])
    print(f"held-out reconstruction PSNR {scores['psnr']:.1f} dB; prior {scores['bits_per_token']:.2f} bits per "
          f"token (uniform: log2({gcfg.n_codes}) = {math.log2(gcfg.n_codes):.2f})")
    print(f"demo done in {time.time() - t0:.0f} s: {out}, {os.path.join(args.out_dir, 'vqvae', 'recon.png')}")


def train_command(p, args):
    """`train-vqvae` / `train-gpt`: a preset's configs, then the flags that were given, all checked before training."""
    vcfg, gcfg = preset_configs(args.preset)
    if args.cmd == 'train-gpt':  # the prior models the codes of this VQ-VAE
        if not args.vqvae:
            p.error("train-gpt needs --vqvae PATH/ckpt.pt (from train-vqvae)")
        vcfg = VQVAEConfig(**load_checkpoint(args.vqvae, 'vqvae')['config'])
        gcfg = fit_prior(gcfg, vcfg)
    try:  # a value the configs refuse (--steps 0, --downsample 3 4 4) is a usage error, not a traceback
        tcfg = _fill(TrainConfig(out_dir=os.path.join('runs', args.cmd.split('-')[1])), args)
        vcfg, gcfg = (_fill(vcfg, args), gcfg) if args.cmd == 'train-vqvae' else (vcfg, _fill(gcfg, args))
        need(args.cmd == 'train-gpt' or bool(vcfg.perceptual_weight) == bool(tcfg.perceptual_net), PERCEPTUAL)
    except ValueError as e:
        p.error(str(e))
    data.check_train_files(args, tcfg)  # its files and folders, before any training
    dataset = data.make_dataset(tcfg, vcfg.sequence_length, vcfg.resolution)  # the data too, before training
    train_vqvae(vcfg, tcfg, dataset) if args.cmd == 'train-vqvae' else train_gpt(gcfg, tcfg, dataset)


def sample_command(p, args):
    """`sample`: new videos to a file, or with --task real videos (first row) and their completions below."""
    videos, frames, cond, n_latent = data.sample_inputs(args, *data.check_sample_args(p, args))
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, guidance=args.guidance,
                    steps=args.steps, n_latent_frames=n_latent)  # steps: masked priors only; causal ones refuse it
    if not args.task:
        sample_videos(args.gpt, args.n, args.out, frames, cond, args.seed, vqvae_path=args.vqvae, **sampling)
    else:  # the real videos on the first row, their completions below, the given regions outlined
        device = setup_device()[0]
        gpt, vqvae = load_model(args.gpt, 'gpt').to(device), load_model(args.vqvae, 'vqvae').to(device)
        out, given = complete_video(vqvae, gpt, videos.to(device), args.task, args.n_given, frames, cond,
                                    torch.Generator(device).manual_seed(args.seed), **sampling)
        mark = torch.stack([torch.zeros_like(given), given]).repeat_interleave(len(videos), 0)  # real row: none
        data.save_video_grid(torch.cat([videos, out.cpu()]), args.out, nrow=len(videos), mark=mark.cpu())
    print(f"wrote {args.out}")


def build_parser():
    """The command line. train-vqvae and train-gpt get one flag per config field (_add_dataclass_args)."""
    p = argparse.ArgumentParser(description="VideoGPT: train a VQ-VAE, then a prior over its codes, then sample.")
    sub = p.add_subparsers(dest='cmd', required=True)
    for cmd, cfg_cls, what in (('train-vqvae', VQVAEConfig, 'the VQ-VAE (stage 1)'),
                               ('train-gpt', GPTConfig, 'the prior (stage 2)')):
        t = sub.add_parser(cmd, help=f"train {what}")
        t.add_argument('--preset', default='mnist', choices=list(PRESETS))
        gpt, fitted = cfg_cls is GPTConfig, ('n_codes', 'latent_shape', 'frame_channels', 'frame_size', 'codebook')
        _add_dataclass_args(t, cfg_cls, skip=fitted * gpt)  # the VQ-VAE's (fit_prior, train_gpt), not flags
        _add_dataclass_args(t, TrainConfig, skip=('perceptual_net',) if gpt else ('vqvae', 'codes_file', 'init_from'))
    s = sub.add_parser('sample', help="sample videos from a prior checkpoint, or complete a real one (--task)")
    s.add_argument('--gpt', required=True, help="the prior's ckpt.pt")
    s.add_argument('--vqvae', default='', help="its VQ-VAE's ckpt.pt (default: the one it was trained on)")
    s.add_argument('--n', type=int, default=8)
    s.add_argument('--out', default='samples.gif', help=".gif, .mp4 or .png")
    s.add_argument('--task', choices=list(TASKS), help="complete the videos of --from: " + '; '.join(
        f'{k}: {v}' for k, v in TASKS.items()))
    s.add_argument('--from', dest='from_', metavar='VIDEO', help="with --task: a video file, or val / train")
    s.add_argument('--n-given', type=int, default=None, help="latent frames given by --task fp (default 1)")
    s.add_argument('--frames', type=int, default=None, help="pixel frames per video past the VQ-VAE's window: slides")
    s.add_argument('--guidance', type=float, default=1.0, help="classifier-free guidance scale (1: none)")
    s.add_argument('--labels', nargs='+', help="classes of each video, cycled: 3 (a 3), 3,7 (a 3 and a 7)")
    s.add_argument('--frames-from', help="conditioning frames: 'val' / 'train' (a dataset split) or a video file")
    s.add_argument('--actions', help="a .npy of actions (n, T, 4) or (T, 4), for action-conditioned priors")
    s.add_argument('--top-p', type=float, default=None)
    e = sub.add_parser('eval', help="score a VQ-VAE (and a prior) on held-out videos: a table and a JSON file")
    e.add_argument('--vqvae', required=True, help="a VQ-VAE's ckpt.pt")
    e.add_argument('--gpt', default='', help="a prior's ckpt.pt: adds bits per token and frame prediction")
    e.add_argument('--n', type=int, default=256, help="held-out videos")
    e.add_argument('--context', type=int, default=10, help="real frames given for prediction")
    e.add_argument('--future', type=int, default=10, help="frames predicted (0: none)")
    e.add_argument('--batch-size', type=int, default=16)
    e.add_argument('--test-seq', default='', help="mnist_test_seq.npy: predict its videos")
    e.add_argument('--json', default='eval.json', help="the scores; the predictions go to the same name .gif")
    e.add_argument('--i3d', default='', help="a TorchScript I3D file: adds FVD (see fvd)")
    for parser in (s, e):  # sampling and data, shared; the data default to the checkpoint's own
        parser.add_argument('--temperature', type=float, default=1.0)
        parser.add_argument('--top-k', type=int, default=None)
        parser.add_argument('--steps', type=int, default=None, help="forward passes of masked decoding (default 12)")
        parser.add_argument('--seed', type=int, default=0)
        parser.add_argument('--dataset', default='', choices=('mnist', 'bair', 'folder'))
        parser.add_argument('--data-dir', default='')
        parser.add_argument('--mnist-dir', default='')
    d = sub.add_parser('demo', help="both stages on Moving MNIST on a CPU (3-9 min on 2 cores), then samples.gif")
    d.add_argument('--out-dir', default='runs/demo')
    d.add_argument('--mnist-dir', default='')
    d.add_argument('--vqvae-steps', type=int, default=600)
    d.add_argument('--vqvae-lr', type=float, default=2e-3)
    d.add_argument('--gpt-steps', type=int, default=1800)
    return p


def main(argv=None):
    """Usage errors exit with code 2 (argparse), a missing or wrong file and data that disagree with 1, in one line."""
    args = (p := build_parser()).parse_args(argv)
    command = dict(sample=sample_command, eval=eval_command, demo=demo).get(args.cmd, train_command)
    try:
        command(p, args)
    except (ValueError, OSError, FloatingPointError) as e:  # our checks' errors, each naming its fix
        if os.environ.get('VIDEOGPT_TRACEBACK'):  # for debugging: the whole stack
            raise
        sys.exit(' '.join(str(e).splitlines()))  # one line, whatever raised it


if __name__ == '__main__':
    main()
