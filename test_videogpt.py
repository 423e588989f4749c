"""Tests for videogpt.py (and data.py): tiny configs on CPU, all seeded. Run: python -m pytest -q test_videogpt.py"""
import argparse
import copy
import dataclasses
import functools
import gzip
import hashlib
import http.server
import json
import math
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import threading
import time

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

import data
import videogpt as vg

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_vqvae(**kw):
    args = dict(in_channels=1, sequence_length=4, resolution=8, downsample=(2, 2, 2), n_hiddens=16,
                n_res_layers=1, n_head=2, embedding_dim=8, n_codes=32)
    args.update(kw)
    return vg.VQVAE(vg.VQVAEConfig(**args))


def tiny_gpt(**kw):
    args = dict(n_codes=16, latent_shape=(2, 3, 3), n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    args.update(kw)
    return vg.VideoGPT(vg.GPTConfig(**args))


def video(B=2, C=1, T=4, H=8, W=None):
    return torch.rand(B, C, T, H, W or H) - 0.5


# ------------------------------------------------------------------------------------------------------------------
# VQ-VAE shapes


@pytest.mark.parametrize('downsample', [(1, 1, 1), (2, 2, 2), (1, 2, 2), (2, 4, 4), (4, 4, 4), (8, 8, 8),
                                        (1, 8, 4), (4, 1, 2)])
@pytest.mark.parametrize('channels', [1, 3])
def test_vqvae_shapes_round_trip(downsample, channels):
    T, R = 8, 16
    m = tiny_vqvae(in_channels=channels, sequence_length=T, resolution=R, downsample=downsample)
    x = video(2, channels, T, R)
    out = m(x)
    t, h, w = T // downsample[0], R // downsample[1], R // downsample[2]
    assert out['x_hat'].shape == x.shape
    assert out['codes'].shape == (2, t, h, w) and out['codes'].dtype == torch.int64
    for key in ('loss', 'recon_loss', 'commitment_loss', 'perplexity'):
        assert out[key].ndim == 0 and torch.isfinite(out[key])
    out['loss'].backward()
    assert all(p.grad is not None for n, p in m.named_parameters() if 'codebook' not in n)


@pytest.mark.parametrize('kw', [dict(), dict(axial_attention=False), dict(in_channels=3, resolution=16,
                                                                         downsample=(1, 4, 2))])
def test_eval_decode_encode_equals_x_hat(kw):
    m = tiny_vqvae(**kw)
    m.train()(video(2, m.config.in_channels, 4, m.config.resolution))  # initialise the codebook
    m.eval()
    x = video(3, m.config.in_channels, 4, m.config.resolution)
    out = m(x)
    codes = m.encode(x)
    assert torch.equal(codes, out['codes'])
    # equal up to the rounding of the straight-through z + (e - z)
    torch.testing.assert_close(m.decode(codes), out['x_hat'], rtol=0, atol=1e-5)


def test_axial_attention_switch_removes_attention():
    with_attn, without = tiny_vqvae(), tiny_vqvae(axial_attention=False)
    assert any(isinstance(m, vg.AxialAttention) for m in with_attn.modules())
    assert not any(isinstance(m, vg.AxialAttention) for m in without.modules())
    assert without(video())['x_hat'].shape == (2, 1, 4, 8, 8)


def test_position_embeddings_shared_by_encoder_and_decoder():
    m = tiny_vqvae()
    assert sum(isinstance(x, vg.AxisPositionEmbedding) for x in m.modules()) == 1  # one set of tables
    x, pos, tables = video(), m.pos(), list(m.pos.parameters())
    # both halves read those tables: each gives them a gradient of its own
    for half in (m.encoder(x, pos), m.decoder(torch.randn(2, 16, 2, 4, 4), pos)):
        grads = torch.autograd.grad(half.square().sum(), tables, retain_graph=True)
        assert all(g.abs().sum() > 0 for g in grads)
    # and the full forward pass uses them: shifting one table changes the codes' vectors and the reconstruction
    with torch.no_grad():
        before = m.eval()(x)['x_hat']
        m.pos.tables[0].add_(1.0)
        assert not torch.allclose(m(x)['x_hat'], before)


def test_groupnorm_is_batch_independent():
    # The same video gives the same reconstruction alone or inside a batch, in train mode too (BatchNorm would not).
    m = tiny_vqvae()
    m(video(4))  # initialise
    m.train()
    m.codebook.eval()  # keep the codebook still; only the normalisation is under test
    x = video(4)
    alone = m(x[:1])['x_hat']
    batch = m(x)['x_hat'][:1]
    torch.testing.assert_close(alone, batch, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# EMA codebook invariants


def _buffers(m):
    return {k: v.clone() for k, v in m.named_buffers()}


def test_eval_forward_leaves_every_buffer_bit_identical():
    m = tiny_vqvae()
    m(video())  # a training step initialises the buffers
    before = _buffers(m)
    m.eval()
    m(video())
    m.encode(video())
    for k, v in m.named_buffers():
        assert torch.equal(v, before[k]), k


def test_fresh_model_in_eval_mode_does_not_initialise():
    m = tiny_vqvae().eval()
    before = _buffers(m)
    m(video())
    assert not m.codebook.initialized
    assert all(torch.equal(v, before[k]) for k, v in m.named_buffers())


def test_codebook_initialised_from_first_batch_outputs():
    cb = vg.EMACodebook(8, 4, decay=1.0)  # decay 1: the EMA step after initialisation changes nothing
    z = torch.randn(2, 4, 2, 4, 4)  # 64 vectors
    cb(z)
    assert cb.initialized
    flat = z.permute(0, 2, 3, 4, 1).reshape(-1, 4)
    # every code is one of the encoder outputs of the first batch, exactly
    assert (cb.embeddings[:, None] - flat[None]).abs().amax(-1).min(1).values.max() < 1e-5


def test_train_forward_moves_used_codes_toward_encoder_outputs():
    cb = vg.EMACodebook(4, 2, decay=0.9, dead_threshold=0.0)
    cb.train()
    cb(torch.randn(1, 2, 1, 4, 4))  # initialise
    target = torch.tensor([3.0, -2.0])
    z = target.view(1, 2, 1, 1, 1).expand(1, 2, 1, 4, 4).contiguous()  # 16 copies of one vector
    _, codes, *_ = cb(z)
    k = codes.flatten()[0].item()
    before = (cb.embeddings[k] - target).norm()
    for _ in range(20):
        cb(z)
    after = (cb.embeddings[k] - target).norm()
    assert after < 0.2 * before
    unused = [j for j in range(4) if j != k]
    assert torch.all(cb.cluster_size[unused] < cb.cluster_size[k])


def test_dead_codes_restart_from_encoder_outputs():
    cb = vg.EMACodebook(16, 2, decay=0.5, dead_threshold=1.0)
    z = torch.randn(1, 2, 1, 4, 4)
    cb(z)
    # Move every input far away to one cluster: only one code is used, the others' counts decay below 1 ...
    far = torch.tensor([50.0, 50.0]).view(1, 2, 1, 1, 1) + 0.1 * torch.randn(1, 2, 1, 4, 4)
    for _ in range(6):
        cb(far)
    flat = far.permute(0, 2, 3, 4, 1).reshape(-1, 2)
    # ... and restart at current encoder outputs: every code is now near the far cluster
    assert (cb.embeddings - flat.mean(0)).norm(dim=1).max() < 2.0
    assert (cb.cluster_size >= 0.5).all()


def test_dead_codes_restart_where_the_error_is():
    # 15 of 16 vectors sit exactly on code 0 (error 0), one is far from every code: restarts must all land on it,
    # where uniform draws would put 15 in 16 on the well-represented cluster.
    torch.manual_seed(0)
    cb = vg.EMACodebook(8, 2, decay=0.5, dead_threshold=1.0)
    cb.initialized.fill_(True)
    cb.embeddings.copy_(torch.arange(8.0)[:, None].repeat(1, 2))
    cb.embed_sum.copy_(cb.embeddings)
    cb.cluster_size.fill_(1.0)
    flat = torch.zeros(16, 2)
    flat[5] = torch.tensor([-40.0, 30.0])
    cb(flat.t().reshape(1, 2, 1, 4, 4))
    dead = cb.cluster_size == 1.0  # restarted codes have their count reset to the threshold
    assert dead.sum() >= 5
    torch.testing.assert_close(cb.embeddings[dead], flat[5].expand(int(dead.sum()), 2))


def test_reload_does_not_reinitialise(tmp_path):
    m = tiny_vqvae()
    m(video())
    path = tmp_path / 'm.pt'
    torch.save(m.state_dict(), path)
    m2 = tiny_vqvae()
    m2.load_state_dict(torch.load(path, weights_only=True))
    assert m2.codebook.initialized and m2.variance_set
    emb = m2.codebook.embeddings.clone()
    m2.codebook.decay = 1.0  # with decay 1 the EMA is frozen: any change would be a re-initialisation
    m2.codebook.dead_threshold = 0.0
    m2(video())
    torch.testing.assert_close(m2.codebook.embeddings, emb)


def test_codebook_is_fp32_under_autocast():
    m = tiny_vqvae()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = m(video())
    assert m.codebook.embeddings.dtype == torch.float32
    assert out['commitment_loss'].dtype == torch.float32


def test_perplexity_and_usage_reported():
    m = tiny_vqvae()
    out = m(video())
    assert 1.0 <= out['perplexity'] <= m.config.n_codes
    assert 0.0 < out['usage'] <= 1.0


def test_reconstruction_loss_ignores_overshoot_past_a_bound_the_target_sits_on():
    x = torch.tensor([-0.5, -0.5, 0.5, 0.5, 0.1, 0.1, -0.5])
    x_hat = torch.tensor([-0.9, -0.4, 0.8, 0.3, 0.3, -0.7, -0.5])
    # free: below black on black, above white on white; counted: everything else, including -0.7 for 0.1
    assert vg.bounded_mse(x_hat, x).item() == pytest.approx((0.1 ** 2 + 0.2 ** 2 + 0.2 ** 2 + 0.8 ** 2) / 7)
    vq = tiny_vqvae().train()
    v = video().clamp(-0.3, 0.5)
    v[:, :, :, :2] = -0.5  # a black band, as in Moving MNIST
    out = vq(v)
    assert out['recon_loss'].item() == pytest.approx((vg.bounded_mse(out['x_hat'], v) / v.var()).item(), rel=1e-5)


def test_recon_loss_normalised_by_measured_variance():
    m = tiny_vqvae()
    x = video(4) * 0.5
    m(x)
    torch.testing.assert_close(m.data_variance, x.var(), rtol=1e-5, atol=0)
    out = m.eval()(x)
    torch.testing.assert_close(out['recon_loss'], F.mse_loss(out['x_hat'], x) / x.var(), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------------------------------
# The prior: causality, attention paths, cache parity, conditioning


COND_SCHEMES = {
    'none': dict(),
    'frames': dict(n_cond_frames=2, frame_channels=3, frame_size=16),
    'vector': dict(cond_dim=6),
    'both': dict(n_cond_frames=1, frame_channels=3, frame_size=16, cond_dim=6),
}


def cond_inputs(cfg, B=2):
    frames = torch.rand(B, cfg.frame_channels, cfg.n_cond_frames, cfg.frame_size, cfg.frame_size) - 0.5 \
        if cfg.n_cond_frames else None
    cond = torch.randn(B, cfg.cond_dim) if cfg.cond_dim else None
    return frames, cond


@pytest.mark.parametrize('scheme', COND_SCHEMES)
def test_causality_in_raster_order(scheme):
    g = tiny_gpt(**COND_SCHEMES[scheme]).eval()
    frames, cond = cond_inputs(g.config)
    codes = torch.randint(0, 16, (2, 2, 3, 3))
    base, _ = g(codes, frames, cond)
    L = 18
    for j in [0, 4, 9, L - 1]:
        changed = codes.clone().view(2, L)
        changed[:, j] = (changed[:, j] + 1) % 16
        logits, _ = g(changed.view(2, 2, 3, 3), frames, cond)
        diff = (logits - base).abs().view(2, L, -1).amax(dim=(0, 2))
        assert torch.all(diff[:j + 1] == 0), f"changing code {j} changed logits at positions <= {j}"
        if j < L - 1:
            assert diff[j + 1:].max() > 0, "later positions must see earlier codes"


def test_non_causal_prior_sees_the_future():
    g = tiny_gpt(causal=False).eval()
    codes = torch.randint(0, 16, (1, 2, 3, 3))
    mask = torch.zeros(1, 2, 3, 3, dtype=torch.bool)
    mask.view(-1)[0] = True
    base, _ = g(codes, mask=mask)
    changed = codes.clone()
    changed.view(-1)[-1] = (changed.view(-1)[-1] + 1) % 16
    logits, _ = g(changed, mask=mask)
    assert (logits.view(-1, 16)[0] - base.view(-1, 16)[0]).abs().max() > 0


@pytest.mark.parametrize('scheme', COND_SCHEMES)
def test_sdpa_equals_reference_forward_and_gradients(scheme):
    fast = tiny_gpt(**COND_SCHEMES[scheme])
    ref = copy.deepcopy(fast)
    for m in ref.modules():
        if hasattr(m, 'fast'):
            m.fast = False
    frames, cond = cond_inputs(fast.config)
    codes = torch.randint(0, 16, (2, 2, 3, 3))
    lf, loss_f = fast(codes, frames, cond)
    lr, loss_r = ref(codes, frames, cond)
    torch.testing.assert_close(lf, lr, rtol=1e-5, atol=1e-5)
    loss_f.backward()
    loss_r.backward()
    for (n, pf), (_, pr) in zip(fast.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(pf.grad, pr.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_reference_attention_matches_sdpa_with_offset_queries():
    q, k, v = torch.randn(3, 2, 4, 5, 8).unbind(0)
    full = vg.attention(q, k, v, causal=True, fast=False)
    # the last 2 queries against all 5 keys (what a KV cache does) = the last 2 rows of the full causal result
    torch.testing.assert_close(vg.attention(q[:, :, 3:], k, v, causal=True, fast=True), full[:, :, 3:])
    torch.testing.assert_close(full, F.scaled_dot_product_attention(q, k, v, is_causal=True))


@pytest.mark.parametrize('scheme', COND_SCHEMES)
def test_cached_step_logits_equal_full_forward(scheme):
    g = tiny_gpt(**COND_SCHEMES[scheme]).eval()
    frames, cond = cond_inputs(g.config)
    codes, step_logits = g.sample(2, frames, cond, return_logits=True, generator=torch.Generator().manual_seed(1))
    full, _ = g(codes, frames, cond)
    torch.testing.assert_close(step_logits, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('scheme', ['none', 'both'])
def test_greedy_cached_sampling_equals_repeated_full_forward(scheme):
    g = tiny_gpt(**COND_SCHEMES[scheme]).eval()
    frames, cond = cond_inputs(g.config)
    cached = g.sample(2, frames, cond, top_k=1)
    codes = torch.zeros(2, 18, dtype=torch.long)
    for i in range(18):
        logits, _ = g(codes.view(2, 2, 3, 3), frames, cond)
        codes[:, i] = logits.view(2, 18, -1)[:, i].argmax(-1)
    assert torch.equal(cached, codes.view(2, 2, 3, 3))


def test_sampling_reproducible_with_generator_and_batched():
    g = tiny_gpt().eval()
    a = g.sample(3, generator=torch.Generator().manual_seed(7), temperature=0.9, top_k=5, top_p=0.9)
    b = g.sample(3, generator=torch.Generator().manual_seed(7), temperature=0.9, top_k=5, top_p=0.9)
    c = g.sample(3, generator=torch.Generator().manual_seed(8), temperature=0.9, top_k=5, top_p=0.9)
    assert a.shape == (3, 2, 3, 3) and a.dtype == torch.int64
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampling_does_not_change_train_mode():
    g = tiny_gpt().train()
    g.sample(1)
    assert g.training


def test_top_k_and_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([vg.sample_logits(logits, top_k=2, generator=gen) for _ in range(300)])
    assert set(draws.flatten().tolist()) == {0, 1}
    draws = torch.stack([vg.sample_logits(logits, top_p=0.7, generator=gen) for _ in range(300)])
    assert set(draws.flatten().tolist()) == {0, 1}  # 0.5 + 0.3 >= 0.7: the nucleus is two tokens
    draws = torch.stack([vg.sample_logits(logits, top_p=0.5, generator=gen) for _ in range(50)])
    assert set(draws.flatten().tolist()) == {0}


def test_frame_features_computed_once_per_sample(monkeypatch):
    g = tiny_gpt(**COND_SCHEMES['frames']).eval()
    frames, _ = cond_inputs(g.config)
    calls = []
    orig = g.frame_encoder.forward
    monkeypatch.setattr(g.frame_encoder, 'forward', lambda x: calls.append(1) or orig(x))
    g.sample(2, frames)
    assert len(calls) == 1


@pytest.mark.parametrize('scheme', ['frames', 'vector', 'both'])
def test_conditioning_changes_logits_and_shapes(scheme):
    g = tiny_gpt(**COND_SCHEMES[scheme]).eval()
    # Train a couple of steps so the zero-initialised conditional norm is no longer the identity.
    opt = torch.optim.AdamW(g.parameters(), lr=1e-2)
    codes = torch.randint(0, 16, (2, 2, 3, 3))
    frames, cond = cond_inputs(g.config)
    for _ in range(3):
        opt.zero_grad()
        g(codes, frames, cond)[1].backward()
        opt.step()
    logits, _ = g(codes, frames, cond)
    assert logits.shape == (2, 2, 3, 3, 16)
    frames2, cond2 = cond_inputs(g.config)
    if frames is not None:
        assert (g(codes, frames2, cond)[0] - logits).abs().max() > 1e-4
    if cond is not None:
        assert (g(codes, frames, cond2)[0] - logits).abs().max() > 1e-4


def test_conditional_norm_starts_as_identity():
    ln = vg.CondLayerNorm(8, cond_dim=3)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(ln(x, torch.randn(2, 3)), F.layer_norm(x, (8,)))


def test_class_labels_and_action_sequences_as_cond():
    g = tiny_gpt(cond_dim=4).eval()
    codes = torch.randint(0, 16, (2, 2, 3, 3))
    by_label, _ = g(codes, cond=torch.tensor([1, 3]))
    by_onehot, _ = g(codes, cond=F.one_hot(torch.tensor([1, 3]), 4).float())
    torch.testing.assert_close(by_label, by_onehot)
    # Two digits per video (B, 2): counts per class, so a pair of equal digits differs from one of them
    g = _conditional_gpt()
    by_pairs, _ = g(codes, cond=torch.tensor([[1, 3], [2, 2]]))
    torch.testing.assert_close(by_pairs, g(codes, cond=torch.tensor([[0, 1, 0, 1], [0, 0, 2, 0.]]))[0])
    assert (by_pairs - g(codes, cond=torch.tensor([1, 2]))[0]).abs().max() > 1e-3
    _raises(ValueError, r'\(2,\) or \(2, k < 4\) in \[0, 4\)', lambda: g(codes, cond=torch.tensor([[1, 4], [0, 0]])))
    _raises(ValueError, 'as floats', lambda: g(codes, cond=F.one_hot(torch.tensor([1, 3]), 4)))  # int one-hot
    # Trained with the null condition (cond_dropout), a prior without cond samples from it: p(x)
    g = _conditional_gpt(cond_dropout=0.1)
    torch.testing.assert_close(g(codes)[0], g(codes, cond=torch.zeros(2, 4))[0])
    g2 = tiny_gpt(cond_dim=8).eval()  # BAIR: (B, T, 4) actions, flattened
    assert g2(codes, cond=torch.randn(2, 2, 4))[0].shape == (2, 2, 3, 3, 16)


def _conditional_gpt(**kw):
    """A class-conditional prior whose conditioning matters: random weights in its conditional LayerNorms."""
    g = tiny_gpt(cond_dim=4, **kw).eval()
    for m in g.modules():
        if isinstance(m, vg.CondLayerNorm):
            nn.init.normal_(m.gain.weight, 0, 0.5)
            nn.init.normal_(m.bias.weight, 0, 0.5)
    return g


def test_classifier_free_guidance_mixes_conditional_and_null_logits():
    g, labels = _conditional_gpt(cond_dropout=0.1), torch.tensor([1, 3])
    codes, logits = g.sample(2, cond=labels, top_k=1, guidance=3.0, return_logits=True)
    # every step's guided logits are u + 3 (c - u), with c and u from full forward passes over the sampled codes
    c, _ = g(codes, cond=labels)
    u, _ = g(codes, cond=torch.zeros(2, 4))
    torch.testing.assert_close(logits, u + 3.0 * (c - u), atol=1e-4, rtol=1e-4)
    assert (c - u).abs().max() > 1e-2  # the condition matters, so the check above is not vacuous
    # guidance 1 is plain conditional sampling, guidance 0 is sampling with the null condition
    draw = lambda **kw: g.sample(2, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(draw(cond=labels, guidance=1.0), draw(cond=labels))
    assert torch.equal(draw(cond=labels, guidance=0.0), draw(cond=torch.zeros(2, 4)))
    _raises(ValueError, 'cond_dropout', lambda: _conditional_gpt().sample(2, cond=labels, guidance=2.0))
    _raises(ValueError, 'pass cond', lambda: g.sample(2, guidance=3.0))  # no condition to lean towards
    _raises(ValueError, 'cond_dim > 0', lambda: tiny_gpt(cond_dropout=0.1))


def test_cond_dropout_trains_some_videos_on_the_null_condition():
    g, codes, labels = _conditional_gpt(cond_dropout=1.0), torch.randint(0, 16, (2, 2, 3, 3)), torch.tensor([1, 3])
    null_loss = g(codes, cond=torch.zeros(2, 4))[1]
    assert g(codes, cond=labels)[1] != null_loss                 # eval mode: the condition is always used
    g.train()
    torch.testing.assert_close(g(codes, cond=labels)[1], null_loss)  # dropout 1: always the null condition


def test_loss_is_mean_cross_entropy_in_nats():
    g = tiny_gpt().eval()
    codes = torch.randint(0, 16, (2, 2, 3, 3))
    logits, loss = g(codes)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 16), codes.reshape(-1)))
    assert abs(loss.item() - math.log(16)) < 0.3  # near uniform at initialisation


# ------------------------------------------------------------------------------------------------------------------
# MAGVIT's tasks: task masks, the training schedule, masked decoding, given tokens


def test_task_masks_give_the_documented_regions():
    shape = (4, 4, 6)  # box and bands: rows 1:3 (half of 4, centred), columns 1:4 (half of 6)
    want = {name: torch.zeros(shape, dtype=torch.bool) for name in vg.TASKS}
    want['fp'][:2] = True
    want['fi'][[0, 3]] = True
    want['opc'][:, 1:3, 1:4] = True
    want['ipc'] = ~want['opc']
    want['oph'][:, :, 1:4] = True
    want['opv'][:, 1:3] = True
    for i, col in enumerate((3, 2, 1, 0)):  # seed 0 draws a direction along -w: the 2x3 box slides left, one a frame
        want['opd'][i, 1:3, col:col + 3] = True
    want['ipd'] = ~want['opd']
    for name in vg.TASKS:
        assert torch.equal(vg.task_mask(name, shape, n_given=2), want[name]), name
    _raises(ValueError, r"unknown task 'xx'.*fp, fi", lambda: vg.task_mask('xx', shape))
    _raises(ValueError, r'nothing to generate', lambda: vg.task_mask('fp', shape, n_given=4))
    _raises(ValueError, r'nothing to generate', lambda: vg.task_mask('fi', (2, 4, 4)))
    _raises(ValueError, r'nothing to condition on', lambda: vg.task_mask('fp', shape, n_given=0))
    _raises(ValueError, r'need a masked prior.*causal=False', lambda: vg.GPTConfig(tasks=('fp',)))
    _raises(ValueError, r"unknown task 'fpp'", lambda: vg.GPTConfig(causal=False, tasks=('fpp',)))


def test_dynamic_tasks_move_their_box_linearly_end_to_end_in_a_seeded_direction():
    shape, directions = (5, 8, 10), set()
    for seed in range(20):
        box = vg.moving_box(shape, seed)
        assert torch.equal(vg.task_mask('opd', shape, seed=seed), box)
        assert torch.equal(vg.task_mask('ipd', shape, seed=seed), ~box)
        assert torch.equal(vg.moving_box(shape, seed), box)  # the seed fixes it
        corners = []
        for frame in box:  # every frame: one 4x5 box, inside the grid
            rows, cols = frame.any(1).nonzero()[:, 0], frame.any(0).nonzero()[:, 0]
            assert frame.sum() == 20 and len(rows) == 4 and len(cols) == 5
            corners.append((rows[0].item(), cols[0].item()))
        c = np.array(corners)  # (t, 2): ends opposite about the centred corner (2, 2.5), linear within rounding
        assert np.abs(c[0] + c[-1] - [4, 5]).max() <= 1 and np.abs(np.diff(c, 2, axis=0)).max() <= 1
        assert (c[[0, -1]] == 0).any() or (c[[0, -1]] == [4, 5]).any()  # it goes as far as the grid lets it
        directions.add(tuple(np.sign(c[-1] - c[0])))
    assert len(directions) >= 4  # seeds point it in different directions
    torch.manual_seed(0)
    masks = vg.draw_task_masks(('opd',), shape, 8).view(8, *shape)
    assert len({tuple(m.nonzero()[0].tolist()) for m in masks}) > 1  # per video, not one direction for all
    state = torch.get_rng_state()  # static tasks draw what they drew before: old runs resume the same
    vg.draw_task_masks(('fp', 'opc'), shape, 8)
    after = torch.get_rng_state()
    torch.set_rng_state(state)
    torch.randint(2, (8,)), torch.randint(1, 5, (8,))  # the task, then fp's n_given: nothing more
    assert torch.equal(torch.get_rng_state(), after)


def test_time_downsampling_sits_early_or_late_and_the_decoder_mirrors_it():
    for place, want in (('early', [(2, 2, 2), (1, 2, 2), (1, 2, 2)]), ('late', [(1, 2, 2), (1, 2, 2), (2, 2, 2)])):
        vq = tiny_vqvae(sequence_length=4, resolution=16, downsample=(2, 8, 8), time_downsample=place)
        assert vg.stage_strides(vq.config) == want
        assert [c.stride for c in vq.encoder.convs[:-1]] == want and [c.stride for c in vq.decoder.convs] == want[::-1]
        assert vq(video(T=4, H=16))['x_hat'].shape == (2, 1, 4, 16, 16)


def test_reflect_padding_gives_a_featureless_video_one_code_everywhere():
    """MAGVIT's reason for reflect padding: the same content gets the same codes, at the edges too. Without the
    position embeddings (no axial attention) a constant video is the same content everywhere."""
    codes = {}
    for padding in ('zeros', 'reflect'):
        torch.manual_seed(0)
        vq = tiny_vqvae(sequence_length=4, resolution=16, downsample=(2, 4, 4), axial_attention=False, padding=padding)
        vq(video(T=4, H=16))  # the codebook starts at encoder outputs
        codes[padding] = vq.eval().encode(torch.full((1, 1, 4, 16, 16), 0.3))
        assert vq.decode(codes[padding]).shape == (1, 1, 4, 16, 16)
    assert codes['reflect'].unique().numel() == 1 and codes['zeros'].unique().numel() > 1
    assert isinstance(tiny_vqvae(padding='reflect').decoder.convs[0][0], torch.nn.Upsample)  # no transposed conv


def test_central_inflation_encodes_a_still_video_as_the_2d_tokenizer_encodes_its_frame():
    """The property tested: right after central inflation, a video whose frames are all one image gets, at every
    latent frame, exactly the codes the 2D tokenizer (sequence_length=1) gives that image, and decoding those codes
    gives the 2D decoding at every frame (to 1e-5)."""
    torch.manual_seed(0)
    kw = dict(resolution=16, n_hiddens=32, n_res_layers=1, embedding_dim=8, n_codes=32)
    image_vq = vg.VQVAE(vg.VQVAEConfig(sequence_length=1, downsample=(1, 4, 4), **kw))
    image = torch.rand(3, 1, 1, 16, 16) - 0.5
    image_vq(image)
    image_vq.eval()
    codes2d = image_vq.encode(image)
    for downsample, place in (((2, 4, 4), 'early'), ((2, 4, 4), 'late'), ((4, 4, 4), 'early')):
        cfg = vg.VQVAEConfig(sequence_length=8, downsample=downsample, time_downsample=place, **kw)
        vq = vg.inflate_from_2d(vg.VQVAE(cfg), image_vq.state_dict()).eval()
        codes = vq.encode(image.expand(-1, -1, 8, -1, -1))
        assert torch.equal(codes, codes2d.expand_as(codes)), (downsample, place)
        torch.testing.assert_close(vq.decode(codes), image_vq.decode(codes2d).expand(-1, -1, 8, -1, -1),
                                   atol=1e-5, rtol=0)
        averaged = vg.inflate_from_2d(vg.VQVAE(cfg), image_vq.state_dict(), 'average')
        w2d, w3d = image_vq.encoder.convs[0].weight, averaged.encoder.convs[0].weight  # time taps sum to the 2D kernel
        torch.testing.assert_close(w3d.sum(2), w2d[:, :, 1])
    _raises(ValueError, "mode='middle'", lambda: vg.inflate_from_2d(vq, image_vq.state_dict(), 'middle'))
    wide = vg.VQVAE(vg.VQVAEConfig(sequence_length=8, downsample=(2, 4, 4), **dict(kw, n_hiddens=64)))
    _raises(ValueError, 'cannot inflate', lambda: vg.inflate_from_2d(wide, image_vq.state_dict()))


def test_train_vqvae_starts_from_the_weights_it_is_given(tmp_path):
    """The route from inflate_from_2d to a trained 3D tokenizer: train_vqvae(init=) trains those weights, not fresh."""
    vcfg = _tiny_vcfg()
    torch.manual_seed(5)
    start = vg.VQVAE(vcfg)
    first = start.encoder.convs[0].weight.detach().clone()
    fresh = vg.train_vqvae(vcfg, _tcfg(tmp_path / 'fresh', steps=1, lr=1e-9), _Clips())
    given = vg.train_vqvae(vcfg, _tcfg(tmp_path / 'given', steps=1, lr=1e-9), _Clips(), init=start)
    assert given is start
    torch.testing.assert_close(given.encoder.convs[0].weight.detach(), first, atol=1e-6, rtol=0)
    assert (fresh.encoder.convs[0].weight.detach() - first).abs().max() > 1e-2
    other = dataclasses.replace(vcfg, n_codes=16)
    _raises(ValueError, 'another VQVAEConfig',
            lambda: vg.train_vqvae(other, _tcfg(tmp_path / 'c', steps=1), _Clips(), init=start))


def test_a_prior_is_refused_beside_a_vqvae_whose_codes_it_did_not_learn(tmp_path, capsys):
    """train_gpt stamps the prior with its VQ-VAE's codebook_digest; completing, predicting, scoring, sampling and
    resuming with another VQ-VAE of the same sizes raise instead of decoding noise; fp16 exports keep the pair."""
    vqs = [vg.train(tiny_vqvae(), 'vqvae', vg.vqvae_step, _Clips(), _tcfg(tmp_path / f'vq{i}', steps=2, seed=i),
                    _tiny_vcfg()).eval() for i in (0, 1)]
    gcfg = vg.fit_prior(vg.GPTConfig(n_layer=1, n_head=2, n_embd=16, dropout=0.0), vqs[0].config)
    gpt = vg.train_gpt(gcfg, _tcfg(tmp_path / 'g', steps=2, vqvae=str(tmp_path / 'vq0' / 'ckpt.pt')), _Clips()).eval()
    assert gpt.config.codebook == data.codebook_digest(vqs[0].codebook.embeddings) != data.codebook_digest(
        vqs[1].codebook.embeddings)
    clip = torch.stack([_Clips()[i]['video'][:, :4] for i in range(2)])
    uses = (lambda vq: vg.complete_video(vq, gpt, clip, 'fp'), lambda vq: vg.predict_frames(vq, gpt, clip[:, :, :2], 2),
            lambda vq: vg.evaluate(vq, gpt, clip))
    for use in uses:
        use(vqs[0])
        _raises(ValueError, 'learned the codes of another VQ-VAE', lambda: use(vqs[1]))
    vg.export_weights(tmp_path / 'vq0' / 'ckpt.pt', tmp_path / 'w' / 'vqvae.pt')
    vg.export_weights(tmp_path / 'g' / 'ckpt.pt', tmp_path / 'w' / 'gpt.pt', vqvae_rel='vqvae.pt')
    gpt16 = vg.load_model(tmp_path / 'w' / 'gpt.pt')
    assert data.check_pair(vg.load_model(tmp_path / 'w' / 'vqvae.pt'), gpt16) == vqs[0].config  # fp16 on both sides
    _raises(ValueError, 'another VQ-VAE', lambda: data.check_pair(vqs[1], gpt16))
    data.check_pair(vqs[1], vg.VideoGPT(gcfg))  # a prior without a digest (saved before it existed) pairs with any
    code, message, _ = _main_exit(['sample', '--gpt', tmp_path / 'g' / 'ckpt.pt', '--vqvae', tmp_path / 'vq1' /
                                   'ckpt.pt', '--out', tmp_path / 's.gif'], capsys)
    assert code == 1 and 'another VQ-VAE' in message and not (tmp_path / 's.gif').exists()
    longer = dict(steps=3, resume=True)
    _raises(ValueError, 'was trained with codebook=', lambda: vg.train_gpt(gcfg, _tcfg(
        tmp_path / 'g', vqvae=str(tmp_path / 'vq1' / 'ckpt.pt'), **longer), _Clips()))
    ckpt = torch.load(tmp_path / 'g' / 'ckpt.pt', weights_only=False)  # a run saved before the digest existed
    del ckpt['config']['codebook']
    torch.save(ckpt, tmp_path / 'g' / 'ckpt.pt')
    resumed = vg.train_gpt(gcfg, _tcfg(tmp_path / 'g', vqvae=str(tmp_path / 'vq0' / 'ckpt.pt'), **longer), _Clips())
    assert resumed.config.codebook == gpt.config.codebook


def test_a_class_conditional_prior_starts_from_an_unconditional_one_as_it_was(tmp_path):
    """init_prior (TrainConfig.init_from): the unconditional prior's norms become conditional ones that ignore the
    condition at first, so the logits are the same for any cond; then train_gpt trains it on the labels."""
    vq = vg.train(tiny_vqvae(), 'vqvae', vg.vqvae_step, _Clips(), _tcfg(tmp_path / 'vq', steps=2), _tiny_vcfg())
    gcfg = vg.fit_prior(vg.GPTConfig(n_layer=1, n_head=2, n_embd=16), vq.config)
    base = vg.train_gpt(gcfg, _tcfg(tmp_path / 'u', steps=2, vqvae=str(tmp_path / 'vq' / 'ckpt.pt')), _Clips())
    cond_cfg = dataclasses.replace(gcfg, cond_dim=3, cond_dropout=0.1)
    g = vg.init_prior(vg.VideoGPT(cond_cfg), tmp_path / 'u' / 'ckpt.pt').eval()
    codes = torch.randint(0, gcfg.n_codes, (2, *gcfg.latent_shape))
    for cond in (torch.tensor([0, 2]), torch.tensor([[1, 1], [0, 2]]), None):
        torch.testing.assert_close(g(codes, cond=cond)[0], base.eval()(codes)[0], atol=1e-4, rtol=1e-4)
    tuned = vg.train_gpt(cond_cfg, _tcfg(tmp_path / 'c', steps=3, lr=1e-3, vqvae=str(tmp_path / 'vq' / 'ckpt.pt'),
                                         init_from=str(tmp_path / 'u' / 'ckpt.pt')), _Clips(with_label=True)).eval()
    told = lambda c: tuned(codes, cond=torch.tensor(c))[0]  # noqa: E731
    assert (told([0, 2]) - told([1, 1])).abs().max() > 1e-4  # the classes now matter (at the start: < 1e-6)
    torch.manual_seed(1)  # the seed train_gpt starts from: tuned from base, not from these fresh weights
    fresh, qkv = vg.VideoGPT(cond_cfg), lambda m: m.blocks[0].attn.qkv.weight.detach()
    assert (qkv(tuned) - qkv(base)).abs().mean() < 0.25 * (qkv(fresh) - qkv(base)).abs().mean()
    for other, differ in ((dataclasses.replace(cond_cfg, n_embd=32), 'n_embd=16'),
                          (dataclasses.replace(gcfg, cond_dim=4), 'cond_dim=3')):
        _raises(ValueError, f'a prior with {differ}', lambda: vg.init_prior(vg.VideoGPT(other), tmp_path / 'c' /
                                                                             'ckpt.pt'))
    # Items without labels: an error, not a prior trained on the null condition alone; a codes file made without
    # the labels is encoded again
    unlabelled = _tcfg(tmp_path / 'n', steps=1, vqvae=str(tmp_path / 'vq' / 'ckpt.pt'),
                       codes_file=str(tmp_path / 'c.pt'))
    _raises(ValueError, "hold no 'actions' or 'label'", lambda: vg.train_gpt(cond_cfg, unlabelled, _Clips()))
    assert 'label' in data.encode_dataset(vq, _Clips(with_label=True), tmp_path / 'c.pt')


def test_schedule_masks_exactly_ceil_n_cos_among_the_unknown_tokens():
    given = torch.stack([vg.task_mask(t, (3, 4, 4)).flatten() for t in ('fp', 'opc', 'uncond', 'ipc')])
    n = (~given).sum(1)  # 32, 36, 48, 4 unknown tokens
    for r in (0.0, 0.3, 0.5, 0.77, 0.999999):
        mask = vg.schedule_mask(given, torch.full((4,), r))
        want = [max(1, math.ceil(int(k) * math.cos(math.pi * r / 2))) for k in n]
        assert mask.sum(1).tolist() == want, r
        assert not (mask & given).any()  # a given token is never masked
    # batch 1 of 4 tokens, many draws: at least one token is always masked, so the loss is never NaN
    g = tiny_gpt(causal=False, latent_shape=(1, 2, 2))
    losses = torch.stack([g(torch.randint(0, 16, (1, 1, 2, 2)))[1] for _ in range(300)])
    assert torch.isfinite(losses).all()


def test_masked_training_draws_a_task_per_video_and_scores_masked_tokens_only(monkeypatch):
    g = tiny_gpt(causal=False, latent_shape=(3, 4, 4), tasks=('fp', 'opc', 'ipc')).eval()
    codes = torch.randint(0, 16, (64, 3, 4, 4))
    seen = {}
    monkeypatch.setattr(vg, 'schedule_mask', lambda given, r, f=vg.schedule_mask: seen.update(
        given=given, mask=f(given, r)) or seen['mask'])
    emb = g.tok_emb.forward
    monkeypatch.setattr(g.tok_emb, 'forward', lambda ids: seen.update(ids=ids) or emb(ids))
    logits, loss = g(codes)
    given, mask, tokens = seen['given'], seen['mask'], codes.view(64, -1)
    allowed = torch.stack([vg.task_mask(t, (3, 4, 4), k).flatten() for t in ('fp', 'opc', 'ipc') for k in (1, 2)])
    assert all((allowed == row).all(1).any() for row in given)  # each video got one of the tasks' masks
    assert len({tuple(row.tolist()) for row in given}) >= 4     # and not all the same one
    assert torch.equal(seen['ids'], tokens.masked_fill(mask, 16))  # given and unmasked tokens go in as they are
    flat = logits.view(64, -1, 16)
    torch.testing.assert_close(loss, F.cross_entropy(flat[mask], tokens[mask]))  # the loss covers masked only


def _count_passes(monkeypatch, g):
    """Record the number of [MASK] tokens in the input of every forward pass of masked decoding."""
    passes, emb = [], g.tok_emb.forward
    monkeypatch.setattr(g.tok_emb, 'forward', lambda ids: passes.append((ids == g.config.n_codes).sum(1)) or emb(ids))
    return passes


@pytest.mark.parametrize('steps', [12, 5])
def test_masked_decoding_takes_exactly_steps_passes_on_the_cosine_schedule(monkeypatch, steps):
    g = tiny_gpt(causal=False, latent_shape=(3, 4, 4), cond_dim=3)
    cond = torch.randn(2, 3)
    passes = _count_passes(monkeypatch, g)
    given = torch.randint(0, 16, (2, 3, 4, 4))
    out = g.sample_masked(2, cond=cond, steps=steps, given=given, given_mask=vg.task_mask('opc', (3, 4, 4)),
                          generator=torch.Generator().manual_seed(0))
    n = 48 - 12  # unknown tokens: all but the 2 x 2 central box of 3 frames
    assert len(passes) == steps
    want = [n] + [math.floor(n * math.cos(math.pi / 2 * s / steps)) for s in range(1, steps)]
    assert [int(p[0]) for p in passes] == want and [int(p[1]) for p in passes] == want
    assert out.max() < 16 and out.min() >= 0
    again = g.sample_masked(2, cond=cond, steps=steps, given=given, given_mask=vg.task_mask('opc', (3, 4, 4)),
                            generator=torch.Generator().manual_seed(0))
    other = g.sample_masked(2, cond=cond, steps=steps, given=given, given_mask=vg.task_mask('opc', (3, 4, 4)),
                            generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_greedy_masked_decoding_commits_the_most_probable_codes_first(monkeypatch):
    # At temperature 0 every draw is an argmax; a code's confidence must still be the model's probability of it,
    # not the tempered one (1 for every argmax), or the order of commitment is the noise's alone.
    g = tiny_gpt(causal=False, latent_shape=(2, 4, 4)).eval()
    torch.nn.init.normal_(g.head.weight, 0.0, 1.0)  # spread the probabilities
    inputs, logits = [], []
    emb, head = g.tok_emb.forward, g.head.forward
    monkeypatch.setattr(g.tok_emb, 'forward', lambda ids: inputs.append(ids.clone()) or emb(ids))
    monkeypatch.setattr(g.head, 'forward', lambda h: logits.append(head(h)) or logits[-1])
    out = g.sample_masked(2, steps=2, temperature=0.0, choice_temperature=0.0)
    first = logits[0].float()  # (2, 32, 16): the first pass, everything masked
    n_commit = 32 - math.floor(32 * math.cos(math.pi / 4))  # pass 1 of 2 leaves floor(N cos(pi/2 * 1/2)) masked
    committed = inputs[1] != g.config.n_codes  # what the second pass was given
    top = first.softmax(-1).amax(-1).topk(n_commit, dim=1).indices
    want = torch.zeros_like(committed).scatter_(1, top, True)
    assert torch.equal(committed, want)
    assert torch.equal(inputs[1][committed], first.argmax(-1)[committed])
    assert torch.equal(out.flatten(1)[committed], inputs[1][committed])


@pytest.mark.parametrize('causal', [False, True])
def test_given_tokens_are_kept_for_every_task(causal):
    shape = (3, 4, 4)
    g = tiny_gpt(causal=causal, latent_shape=shape, **({} if causal else dict(tasks=tuple(vg.TASKS)))).eval()
    given = torch.randint(0, 16, (3, *shape))
    for task in (('fp', 'uncond') if causal else vg.TASKS):
        for k in ((1, 2) if task == 'fp' else (1,)):
            m = vg.task_mask(task, shape, k)
            out = g.sample(3, given=given, given_mask=m, generator=torch.Generator().manual_seed(0))
            assert torch.equal(out[:, m], given[:, m]), task
            assert out.min() >= 0 and out.max() < 16 and out.dtype == torch.int64  # no [MASK] id left
            if task != 'uncond':
                assert not torch.equal(out, given)  # the rest was generated
    per_video = torch.stack([vg.task_mask('opc', shape), vg.task_mask('ipc', shape), vg.task_mask('fi', shape)])
    if not causal:  # a different task for each video of one batch
        out = g.sample(3, given=given, given_mask=per_video)
        assert torch.equal(out[per_video], given[per_video])


@pytest.mark.parametrize('scheme', ['none', 'both'])
def test_causal_prefix_continuation_equals_greedy_full_forward(scheme):
    g = tiny_gpt(**COND_SCHEMES[scheme]).eval()
    frames, cond = cond_inputs(g.config)
    given = torch.randint(0, 16, (2, 2, 3, 3))
    m = vg.task_mask('fp', (2, 3, 3))  # the first latent frame: 9 tokens
    cached, step_logits = g.sample(2, frames, cond, top_k=1, given=given, given_mask=m, return_logits=True)
    codes = given.clone().view(2, 18)
    for i in range(9, 18):
        logits, _ = g(codes.view(2, 2, 3, 3), frames, cond)
        codes[:, i] = logits.view(2, 18, -1)[:, i].argmax(-1)
    assert torch.equal(cached, codes.view(2, 2, 3, 3))
    full, _ = g(cached, frames, cond)
    torch.testing.assert_close(step_logits, full, rtol=1e-5, atol=1e-5)  # the prefix's one-chunk pass included


def test_guided_prefix_continuation_mixes_logits_from_full_forward():
    g = _conditional_gpt(cond_dropout=0.1)
    cond = torch.eye(4)[:2]
    given = torch.randint(0, 16, (2, 2, 3, 3))
    codes, logits = g.sample(2, cond=cond, guidance=3.0, given=given, given_mask=vg.task_mask('fp', (2, 3, 3)),
                             return_logits=True)
    c, _ = g(codes, cond=cond)
    u, _ = g(codes, cond=torch.zeros_like(cond))
    torch.testing.assert_close(logits, u + 3.0 * (c - u), rtol=1e-4, atol=1e-4)
    assert torch.equal(codes[:, 0], given[:, 0])


def test_given_errors_name_the_fix():
    g, gm = tiny_gpt(), tiny_gpt(causal=False, tasks=('fp', 'opc'))
    given = torch.randint(0, 16, (2, 2, 3, 3))
    _raises(ValueError, r'raster-order prefix.*causal=False', lambda: g.sample(
        2, given=given, given_mask=vg.task_mask('opc', (2, 3, 3))))
    _raises(ValueError, r'raster-order prefix', lambda: g.sample(
        2, given=given, given_mask=torch.stack([vg.task_mask('fp', (2, 3, 3)), torch.zeros(2, 3, 3, dtype=bool)])))
    for model in (g, gm):
        m = vg.task_mask('fp', (2, 3, 3))
        _raises(ValueError, r'codes must be \(B, 2, 3, 3\)', lambda: model.sample(2, given=given[:, :1], given_mask=m))
        _raises(ValueError, r'codes must lie in \[0, 16\)', lambda: model.sample(2, given=given + 16, given_mask=m))
        _raises(ValueError, r'given holds 2 code grids for n=3', lambda: model.sample(3, given=given, given_mask=m))
        _raises(ValueError, r'given_mask must be a bool', lambda: model.sample(2, given=given, given_mask=m.float()))
        _raises(ValueError, r'pass both given', lambda: model.sample(2, given=given))
    _raises(ValueError, r'steps must be a positive integer', lambda: gm.sample(1, steps=0))
    _raises(ValueError, r'steps counts the passes of masked decoding', lambda: g.sample(1, steps=12))


def test_complete_video_keeps_the_given_region_and_maps_it_to_pixels():
    vq = tiny_vqvae().eval()  # 4x8x8 -> 2x4x4 codes
    g = tiny_gpt(n_codes=32, latent_shape=(2, 4, 4), causal=False, tasks=('opc',))
    x = video()
    seen = {}
    sample = g.sample
    g.sample = lambda n, *a, **kw: seen.update(kw) or sample(n, *a, **kw)
    out, pixels = vg.complete_video(vq, g, x, 'opc', generator=torch.Generator().manual_seed(0), steps=3)
    assert out.shape == x.shape and out.abs().max() <= 0.5
    assert torch.equal(seen['given'], vq.encode(x)) and seen['steps'] == 3
    want = torch.zeros(4, 8, 8, dtype=torch.bool)
    want[:, 2:6, 2:6] = True  # latent box rows/cols 1:3 of 4, each latent cell 2 x 2 x 2 pixels
    assert torch.equal(pixels, want)


# ------------------------------------------------------------------------------------------------------------------
# Videos longer than the window


def _greedy_window(g, codes, p, cond=None):
    """Greedy decoding by full forward passes of the tokens after the first p of one window (n, t, h, w)."""
    codes = codes.clone().view(len(codes), -1)
    for i in range(p, codes.shape[1]):
        logits, _ = g(codes.view(len(codes), *g.config.latent_shape), cond=cond)
        codes[:, i] = logits.view(len(codes), codes.shape[1], -1)[:, i].argmax(-1)
    return codes.view(len(codes), *g.config.latent_shape)


def test_long_sampling_slides_one_latent_frame_at_a_time():
    g = tiny_gpt(latent_shape=(3, 2, 2), cond_dim=3).eval()  # windows of 3 latent frames of 4 tokens
    cond = torch.randn(2, 3)
    long = g.sample(2, cond=cond, top_k=1, n_latent_frames=6)
    assert long.shape == (2, 6, 2, 2) and long.dtype == torch.int64 and 0 <= long.min() and long.max() < 16
    assert torch.equal(long[:, :3], _greedy_window(g, torch.zeros(2, 3, 2, 2, dtype=torch.long), 0, cond))
    for s in range(1, 4):  # each slide: the previous 2 frames given, the third greedy by full forward passes
        assert torch.equal(long[:, s:s + 3], _greedy_window(g, long[:, s:s + 3], 8, cond)), s
    draw = lambda seed: g.sample(2, cond=cond, n_latent_frames=5, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(draw(0), draw(0)) and not torch.equal(draw(0), draw(1))
    masked = tiny_gpt(latent_shape=(3, 2, 2), causal=False, tasks=('fp',)).eval()
    assert masked.sample(2, n_latent_frames=5, steps=2).shape == (2, 5, 2, 2)
    _raises(ValueError, 'at least 2 latent frames', lambda: tiny_gpt(latent_shape=(1, 2, 2)).sample(1, n_latent_frames=3))
    _raises(ValueError, 'and at least 3 frames', lambda: g.sample(1, cond=cond[:1], n_latent_frames=2))


def test_decode_long_stitches_the_most_central_window_frames():
    vq = tiny_vqvae().eval()  # windows of 2 latent frames, each 2 pixel frames
    codes = torch.randint(0, 32, (2, 5, 4, 4))
    with torch.no_grad():
        video = vq.decode(codes)
        assert video.shape == (2, 1, 10, 8, 8)
        # windows start at 0, 1, 2, 3; frame i sits equally central in the windows at i - 1 and i: the earlier wins
        for i in range(5):
            s = max(0, i - 1)
            window = vq.decode(codes[:, s:s + 2])
            torch.testing.assert_close(video[:, :, 2 * i:2 * i + 2], window[:, :, 2 * (i - s):2 * (i - s) + 2])
        # windows of 4 latent frames over 9 start at 0, 2, 4 and 5 (the last one aligned to the end)
        vq4, codes = tiny_vqvae(sequence_length=8).eval(), torch.randint(0, 32, (1, 9, 4, 4))
        video = vq4.decode(codes)
        for i, s in enumerate([0, 0, 0, 2, 2, 4, 4, 5, 5]):  # the window in which frame i is most central
            window = vq4.decode(codes[:, s:s + 4])
            torch.testing.assert_close(video[:, :, 2 * i:2 * i + 2], window[:, :, 2 * (i - s):2 * (i - s) + 2])
        torch.testing.assert_close(vq.decode(codes[:, :2]), vq.decoder(vq.post_vq(
            vq.codebook.embeddings[codes[:, :2]].permute(0, 4, 1, 2, 3)), vq.pos()))


# ------------------------------------------------------------------------------------------------------------------
# Metrics


def test_psnr_and_ssim_per_video():
    a = torch.rand(3, 2, 4, 16, 20) - 0.5
    b = a.clone()
    b[1] += 0.1  # MSE 0.01 -> 20 dB
    b[2] = (a[2] + 0.2 * torch.randn_like(a[2])).clamp(-0.5, 0.5)
    p, s = vg.psnr(a, b), vg.ssim(a, b)
    assert p.shape == s.shape == (3,)
    assert p[0] >= 99 and abs(p[1] - 20) < 1e-3 and p[2] < 20
    assert s[0] == pytest.approx(1.0, abs=1e-6) and s[2] < s[1] < 1
    _raises(ValueError, 'at least 11x11', lambda: vg.ssim(a[..., :10, :], a[..., :10, :]))


def test_ssim_agrees_with_scikit_image():
    skimage_metrics = pytest.importorskip('skimage.metrics')
    a = torch.rand(2, 3, 2, 24, 30) - 0.5
    b = (a + 0.15 * torch.randn_like(a)).clamp(-0.5, 0.5)
    ref = [np.mean([skimage_metrics.structural_similarity(
        a[i, c, t].double().numpy() + 0.5, b[i, c, t].double().numpy() + 0.5, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=1) for c in range(3) for t in range(2)]) for i in range(2)]
    torch.testing.assert_close(vg.ssim(a, b).double(), torch.tensor(ref, dtype=torch.float64), atol=1e-4, rtol=0)


def test_frechet_distance_closed_forms():
    a = torch.randn(400, 6, generator=torch.Generator().manual_seed(0))
    assert abs(vg.frechet_distance(a, a)) < 1e-9  # identical sets
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 1.0])
    assert vg.frechet_distance(a, a + shift) == pytest.approx(shift.square().sum().item(), rel=1e-7)  # equal covariances
    x, y = torch.randn(2000, 1) * 2 + 1, torch.randn(3000, 1) * 0.5 - 1  # two 1-D Gaussians, as fitted
    want = (x.mean() - y.mean()).square() + (x.double().std() - y.double().std()).square()
    assert vg.frechet_distance(x, y) == pytest.approx(want.item(), rel=1e-6)


class _StandInI3D(nn.Module):
    """A tiny network with the I3D interface that FVD code uses: (B, 3, T, 224, 224) in [-1, 1] -> (B, 400)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3 * 4 * 4, 400)

    def forward(self, x):
        assert x.shape[1] == 3 and x.shape[-2:] == (224, 224) and x.min() >= -1 and x.max() <= 1
        return self.proj(F.adaptive_avg_pool3d(x, (1, 4, 4)).flatten(1))


@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # torch.jit: the format the I3D file comes in
def test_fvd_runs_the_whole_pipeline_through_a_scripted_network(tmp_path):
    torch.jit.script(_StandInI3D()).save(str(tmp_path / 'i3d.pt'))
    i3d = torch.jit.load(str(tmp_path / 'i3d.pt'))  # what a user does with the real file
    g = torch.Generator().manual_seed(0)
    real = torch.rand(24, 1, 4, 16, 16, generator=g) - 0.5
    same = vg.fvd(real, real, i3d, batch_size=5)
    other = vg.fvd(real, (real * 0.3).clamp(-0.5, 0.5), i3d, batch_size=5)  # low-contrast copies
    assert abs(same) < 1e-6 and other > 1e-3


def test_codebook_stats_perplexity_and_usage():
    assert vg.codebook_stats(torch.tensor([5, 5, 5, 5])) == pytest.approx((4.0, 1.0))  # all used equally: K
    assert vg.codebook_stats(torch.tensor([0, 7, 0, 0])) == pytest.approx((1.0, 0.25))  # one code
    p = torch.tensor([0.5, 0.25, 0.25, 0.0])
    assert vg.codebook_stats(p * 8) == pytest.approx((2 ** 1.5, 0.75))  # entropy 1.5 bits


def test_prediction_scores_are_the_leaderboards_per_frame_mse_ssim_and_psnr():
    real = torch.zeros(2, 1, 3, 16, 16) - 0.5
    pred = real.clone()
    pred[0, :, 1, :4, :4] += 0.5  # 16 pixels off by 0.5 in one of 3 frames: 16 * 0.25 / 3 per frame
    pred[1] += 0.1                # every pixel off by 0.1: 256 * 0.01 per frame, PSNR 20 dB
    s = vg.prediction_scores(pred, real)
    assert s['mse'].tolist() == pytest.approx([16 * 0.25 / 3, 2.56])
    assert s['psnr'][1].item() == pytest.approx(20.0, abs=1e-4)
    frame_psnr = 10 * math.log10(256 / (16 * 0.25))  # frames 0 and 2 are exact: PSNR capped at 100 dB
    assert s['psnr'][0].item() == pytest.approx((100 + frame_psnr + 100) / 3, abs=1e-3)
    assert s['ssim'].tolist() == pytest.approx(vg.ssim(pred, real).tolist())


def test_predict_frames_encodes_only_the_context_and_continues_it():
    torch.manual_seed(0)
    vq = tiny_vqvae(sequence_length=8).eval()  # windows of 8 frames = 4 latent frames of 4x4
    vq(video(T=8))
    g = tiny_gpt(n_codes=32, latent_shape=(4, 4, 4)).eval()
    context, calls = video(T=4), []
    encode = vq.encode
    vq.encode = lambda x: calls.append(x) or encode(x)
    gen = lambda: torch.Generator().manual_seed(0)
    pred = vg.predict_frames(vq, g, context, 8, generator=gen(), top_k=1)  # 4 + 8 frames: one slide past the window
    assert pred.shape == (2, 1, 8, 8, 8) and pred.abs().max() <= 0.5
    padded = calls[0]  # the context, then copies of its last frame: no other pixel is ever encoded
    assert len(calls) == 1 and torch.equal(padded[:, :, :4], context)
    assert all(torch.equal(padded[:, :, i], context[:, :, 3]) for i in range(4, 8))
    given = encode(padded)[:, :2]  # the 2 latent frames that cover the 4 context frames
    codes = g.sample(2, top_k=1, given=encode(padded), given_mask=vg.task_mask('fp', (4, 4, 4), 2), n_latent_frames=6)
    assert torch.equal(codes[:, :2], given)
    torch.testing.assert_close(pred, vq.decode(codes)[:, :, 4:12].clamp(-0.5, 0.5))
    masked = tiny_gpt(n_codes=32, latent_shape=(4, 4, 4), causal=False, tasks=('fp',)).eval()
    assert vg.predict_frames(vq, masked, context, 4, steps=2).shape == (2, 1, 4, 8, 8)
    long = torch.cat([video(T=6), context], dim=2)  # 10 frames, a whole window and more: its last 8 are encoded
    calls.clear()
    pred = vg.predict_frames(vq, g, long, 3, top_k=1)
    assert pred.shape == (2, 1, 3, 8, 8) and len(calls) == 1 and torch.equal(calls[0], long[:, :, 2:])  # no padding
    window = encode(long[:, :, 2:])  # the prior continues its last 3 latent frames: 2 slides reach 3 more frames
    codes = g.sample(2, top_k=1, given=window.roll(-1, 1), given_mask=vg.task_mask('fp', (4, 4, 4), 3),
                     n_latent_frames=5)
    assert torch.equal(codes[:, :3], window[:, 1:])
    torch.testing.assert_close(pred, vq.decode(codes)[:, :, 6:9].clamp(-0.5, 0.5))
    _raises(ValueError, 'at least 1 of each', lambda: vg.predict_frames(vq, g, context, 0))


def test_evaluate_scores_a_class_conditional_prior_with_its_labels():
    torch.manual_seed(0)
    vq = tiny_vqvae().eval()
    g = tiny_gpt(n_codes=32, latent_shape=vq.config.latent_shape, cond_dim=4).eval()
    for m in g.modules():  # make the labels matter: a random, not an identity, conditional LayerNorm
        if isinstance(m, vg.CondLayerNorm) and m.cond_dim:
            torch.nn.init.normal_(m.gain.weight)
    x, labels = video(B=5), torch.tensor([0, 1, 2, 3, 0])
    with torch.no_grad():
        nats = [g(vq.encode(x[i:i + 2]), cond=labels[i:i + 2])[1] * len(x[i:i + 2]) for i in range(0, 5, 2)]
    want = sum(nats).item() / 5 / math.log(2)
    got = vg.evaluate(vq, g, x, labels, batch_size=2)['bits_per_token']
    assert got == pytest.approx(want, rel=1e-5)
    assert got != pytest.approx(vg.evaluate(vq, g, x, (labels + 1) % 4, batch_size=2)['bits_per_token'], rel=1e-3)


def test_evaluate_runs_in_eval_mode_and_scores_frame_conditioned_priors():
    vq = tiny_vqvae(resolution=16).train()
    vq(video(H=16))  # initialise the codebook, as training would
    g = tiny_gpt(n_codes=32, latent_shape=vq.config.latent_shape, n_cond_frames=1, frame_channels=1,
                 frame_size=16).train()
    buffers = {k: v.clone() for k, v in vq.state_dict().items()}
    x = video(B=3, H=16)
    scores = vg.evaluate(vq, g, x, batch_size=2)
    assert all(torch.equal(buffers[k], v) for k, v in vq.state_dict().items())  # the codebook did not move
    assert vq.training and g.training  # modes restored
    vq.eval(), g.eval()
    with torch.no_grad():
        want = (g(vq.encode(x), x[:, :, :1])[1] / math.log(2)).item()
        x_hat = vq(x)['x_hat'].clamp(-0.5, 0.5)
    assert scores['bits_per_token'] == pytest.approx(want, rel=1e-5)
    assert scores['ssim'] == pytest.approx(vg.ssim(x_hat, x).mean().item(), rel=1e-5)
    assert scores['nmse'] == pytest.approx((F.mse_loss(x_hat, x) / x.var()).item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# Overfitting one batch


def test_vqvae_overfits_one_batch():
    m = tiny_vqvae(n_hiddens=32)
    x = video(2)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = None
    for step in range(200):
        out = m(x)
        opt.zero_grad()
        out['loss'].backward()
        opt.step()
        first = first if first is not None else out['recon_loss'].item()
    assert out['recon_loss'].item() < 0.3 * first


def test_prior_overfits_one_batch():
    g = tiny_gpt()
    codes = torch.randint(0, 16, (2, 2, 3, 3))
    opt = torch.optim.AdamW(g.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = g(codes)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1  # from ln(16) = 2.77 nats


# ------------------------------------------------------------------------------------------------------------------
# Clear errors


def _raises(exc, pattern, fn):
    with pytest.raises(exc, match=pattern):
        fn()


def test_clear_errors_vqvae():
    m = tiny_vqvae()
    _raises(ValueError, r'\(B, C, T, H, W\).*x\[None\]', lambda: m(torch.rand(1, 4, 8, 8) - 0.5))
    _raises(ValueError, r'3 channels.*in_channels=3', lambda: m(video(C=3)))
    _raises(ValueError, r'video is 4x9x9 but the model was built for 4x8x8: crop or resize', lambda: m(video(H=9)))
    _raises(ValueError, r'\[-0.5, 0.5\].*x / 255 - 0.5', lambda: m(video() * 10))
    _raises(TypeError, r'float.*/ 255 - 0.5', lambda: m(torch.zeros(2, 1, 4, 8, 8, dtype=torch.uint8)))
    _raises(ValueError, r'not divisible.*multiples of', lambda: vg.VQVAEConfig(resolution=60, downsample=(1, 8, 8)))
    _raises(ValueError, r'powers of 2', lambda: vg.VQVAEConfig(downsample=(3, 2, 2)))
    _raises(ValueError, r'codes must lie in \[0, 32\)', lambda: m.decode(torch.full((1, 2, 4, 4), 40)))
    _raises(ValueError, r'codes must be \(B, 2, 4, 4\)', lambda: m.decode(torch.zeros(1, 2, 4, 5, dtype=torch.long)))


def test_clear_errors_prior():
    g = tiny_gpt(cond_dim=4)
    codes = torch.randint(0, 16, (2, 2, 3, 3))
    _raises(ValueError, r'codes must lie in \[0, 16\).*n_codes', lambda: g(codes + 16, cond=torch.zeros(2, 4)))
    _raises(TypeError, r'int64', lambda: g(codes.float(), cond=torch.zeros(2, 4)))
    _raises(ValueError, r'latent_shape', lambda: g(codes[:, :1], cond=torch.zeros(2, 4)))
    _raises(ValueError, r'cond must be \(2, 4\).*cond_dim', lambda: g(codes, cond=torch.zeros(2, 5)))
    _raises(ValueError, r'vector-conditioned.*pass cond', lambda: g(codes))
    _raises(ValueError, r'frames were given.*n_cond_frames', lambda: g(codes, frames=torch.zeros(2, 1, 1, 8, 8),
                                                                         cond=torch.zeros(2, 4)))
    gf = tiny_gpt(**COND_SCHEMES['frames'])
    _raises(ValueError, r'frame-conditioned.*\(2, 3, 2, 16, 16\)',
            lambda: gf(codes, frames=torch.zeros(2, 3, 1, 16, 16)))
    _raises(ValueError, r'sample_masked needs.*causal=False', lambda: tiny_gpt().sample_masked(1))


def test_values_that_would_give_garbage_are_refused():
    m = tiny_vqvae().eval()
    x = video()
    for bad, pattern in ((torch.full_like(x, float('nan')), 'NaN or inf'), (x + 0.5 * 255, r'\[-0.5, 0.5\]'),
                         (x[:0], 'empty')):
        _raises(ValueError, pattern, lambda: m.encode(bad))
    assert torch.equal(m.encode(x.double()), m.encode(x)) and torch.equal(m.encode(x.half()), m.encode(x.half().float()))
    g = tiny_gpt(**COND_SCHEMES['both']).eval()
    frames, cond = cond_inputs(g.config)
    codes = torch.randint(0, 16, (2, 2, 3, 3))
    _raises(ValueError, r'frames values must lie in \[-0.5, 0.5\]', lambda: g(codes, (frames + 0.5) * 255, cond))
    _raises(ValueError, 'cond holds NaN', lambda: g(codes, frames, cond * float('nan')))
    _raises(ValueError, r'with B >= 1', lambda: g(codes[:0], frames[:0], cond[:0]))
    cast, _ = g(codes.int(), frames.double(), cond.double())  # int32 codes and float64 conditioning are cast
    torch.testing.assert_close(cast, g(codes, frames, cond)[0])
    for kw in (dict(temperature=-1.0), dict(temperature=float('nan')), dict(top_k=0), dict(top_p=0.0),
               dict(top_p=1.5)):
        _raises(ValueError, r'temperature >= 0.*top_k >= 1.*top_p in \(0, 1\]',
                lambda: vg.sample_logits(torch.zeros(1, 4), **kw))
    for kw in (dict(steps=0), dict(log_every=0), dict(batch_size=0), dict(ckpt_every=0)):
        _raises(ValueError, 'must be at least 1', lambda: vg.TrainConfig(**kw))
    _raises(ValueError, 'lr and grad_clip must be > 0', lambda: vg.TrainConfig(lr=0.0))


def test_wrong_files_disks_and_folders_get_errors_that_name_the_fix(tmp_path, monkeypatch, capsys):
    (tmp_path / 'notes.txt').write_text('not a checkpoint')
    _raises(ValueError, 'not a readable checkpoint', lambda: vg.load_model(tmp_path / 'notes.txt'))
    torch.save({'weights': torch.zeros(1)}, tmp_path / 'other.pt')
    _raises(ValueError, 'not a VideoGPT checkpoint', lambda: vg.load_model(tmp_path / 'other.pt'))
    vg.train(tiny_vqvae(), 'vqvae', vg.vqvae_step, _Clips(), _tcfg(tmp_path / 'vq', steps=2), _tiny_vcfg())
    vq_path = tmp_path / 'vq' / 'ckpt.pt'
    _raises(ValueError, "holds a 'vqvae' model where a 'gpt' one", lambda: vg.load_model(vq_path, 'gpt'))
    wide = tiny_vqvae(n_hiddens=32)
    _raises(ValueError, r'trained with n_hiddens=16: resume with those settings', lambda: vg.train(
        wide, 'vqvae', vg.vqvae_step, _Clips(), _tcfg(tmp_path / 'vq', steps=4, resume=True), wide.config))
    r = subprocess.run([sys.executable, os.path.join(HERE, 'videogpt.py'), 'train-gpt', '--vqvae',
                        str(tmp_path / 'notes.txt'), '--out-dir', str(tmp_path / 'g')], capture_output=True, text=True)
    assert r.returncode != 0 and 'not a readable checkpoint' in r.stderr
    r = subprocess.run([sys.executable, os.path.join(HERE, 'videogpt.py'), 'train-vqvae', '--steps', '0'],
                       capture_output=True, text=True)
    assert r.returncode == 2 and 'steps=0: it must be at least 1 (--steps)' in r.stderr  # a usage error
    with pytest.raises(SystemExit) as exit_:  # so is a model flag the config refuses
        vg.main(['train-vqvae', '--downsample', '3', '4', '4', '--out-dir', str(tmp_path / 'never')])
    assert exit_.value.code == 2 and 'must be powers of 2' in capsys.readouterr().err
    before = (tmp_path / 'vq' / 'ckpt.pt').read_bytes()

    def full_disk(obj, path):
        open(path, 'wb').write(b'half a checkpoint')
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(torch, 'save', full_disk)
    _raises(OSError, r'could not write .*ckpt.pt.*No space left.*free some disk space',
            lambda: vg.save_checkpoint(str(vq_path), step=1))
    assert not [f for f in os.listdir(tmp_path / 'vq') if 'tmp' in f]  # the half-written temporary file is gone
    assert (tmp_path / 'vq' / 'ckpt.pt').read_bytes() == before
    for name in ('folder', 'bair'):
        _raises(ValueError, f'--dataset {name} needs --data-dir', lambda: data.make_dataset(
            vg.TrainConfig(dataset=name), 4, 8))


# ------------------------------------------------------------------------------------------------------------------
# Training loop: resume, NaN guard, distributed, command line


class _Clips(torch.utils.data.Dataset):
    """Tiny deterministic videos (1, 4, 8, 8) with a random crop offset drawn from torch's global RNG, like BAIR."""

    def __init__(self, n=16, with_label=False, with_actions=False, with_start=False):
        self.videos = torch.rand(n, 1, 6, 8, 8, generator=torch.Generator().manual_seed(3)) - 0.5
        self.with_label, self.with_actions, self.with_start = with_label, with_actions, with_start

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, idx):
        s = int(torch.randint(3, ()))
        item = {'video': self.videos[idx, :, s:s + 4]}
        if self.with_label:
            item['label'] = torch.tensor(idx % 3)
        if self.with_actions:
            item['actions'] = torch.full((4, 4), idx / 16)
        if self.with_start:  # which window was drawn
            item['start'] = torch.tensor(s)
        return item


def _tcfg(tmp_path, **kw):
    args = dict(out_dir=str(tmp_path), steps=6, batch_size=2, lr=1e-3, warmup=2, log_every=1, sample_every=100,
                ckpt_every=3, num_workers=0, seed=1)
    args.update(kw)
    return vg.TrainConfig(**args)


def _tiny_vcfg():
    return tiny_vqvae().config


class _Interrupt(Exception):
    pass


def _interrupt_after(step_fn, n):
    calls = []

    def fn(model, batch):
        if len(calls) == n:
            raise _Interrupt
        calls.append(1)
        return step_fn(model, batch)
    return fn


def _run_interrupted(kind, tmp_path, make, step_fn):
    """(weights of an uninterrupted run, weights of a run interrupted after step 4 then resumed)."""
    w = dict(num_workers=2)  # worker processes, as users run it
    torch.manual_seed(0)
    full = vg.train(make(), kind, step_fn, _Clips(), _tcfg(tmp_path / 'full', **w), cfg_of(make))
    torch.manual_seed(0)
    with pytest.raises(_Interrupt):  # killed during step 5; the last checkpoint is from step 3
        vg.train(make(), kind, _interrupt_after(step_fn, 4), _Clips(), _tcfg(tmp_path / 'cut', **w), cfg_of(make))
    assert vg.load_checkpoint(tmp_path / 'cut' / 'ckpt.pt')['step'] == 3
    resumed = vg.train(make(), kind, step_fn, _Clips(), _tcfg(tmp_path / 'cut', resume=True, **w), cfg_of(make))
    steps = [json.loads(line)['step'] for line in open(tmp_path / 'cut' / 'metrics.jsonl')]
    assert steps == list(range(1, 7))  # step 4, logged before the interruption, is logged once
    return full.state_dict(), resumed.state_dict()


def cfg_of(make):
    return make().config


def test_lecam_matches_its_formula_and_moves_its_anchors():
    disc = vg.Discriminator(tiny_vqvae().config)
    disc.ema_real.fill_(0.5)
    disc.ema_fake.fill_(-0.25)
    reg = vg.lecam(torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 0.0]), disc, decay=0.9)
    # mean (D(real) - a_F)^2 + mean (D(fake) - a_R)^2 (Tseng et al. 2021, eq. 3), then the anchors move to the means
    assert reg.item() == pytest.approx((1.25 ** 2 + 2.25 ** 2) / 2 + (1.5 ** 2 + 0.5 ** 2) / 2)
    assert disc.ema_real.item() == pytest.approx(0.9 * 0.5 + 0.1 * 1.5)
    assert disc.ema_fake.item() == pytest.approx(0.9 * -0.25 + 0.1 * -0.5)


def test_gan_tokenizer_warms_up_then_trains_its_discriminator_and_resumes_bit_for_bit(tmp_path):
    cfg = tiny_vqvae(gan_weight=0.1, lecam_weight=0.01, gan_warmup=2).config

    def run(sub, cut=None, **kw):  # the VQ-VAE, its discriminator and the discriminator's optimizer, fresh
        torch.manual_seed(0)
        vq, disc = vg.VQVAE(cfg), vg.Discriminator(cfg)
        opt = torch.optim.AdamW(disc.parameters(), lr=1e-3, betas=(0.5, 0.9))
        step = vg.tokenizer_step(disc, opt, cfg)
        vq = vg.train(vq, 'vqvae', _interrupt_after(step, cut) if cut else step, _Clips(), _tcfg(tmp_path / sub, **kw),
                      cfg, aux=dict(discriminator=disc, disc_optimizer=opt))
        return vq, disc, opt
    torch.manual_seed(0)
    start = vg.Discriminator(cfg).state_dict()
    full, disc, opt = run('full')
    log = [json.loads(line) for line in open(tmp_path / 'full' / 'metrics.jsonl')]
    assert 'gan' not in log[1] and all('gan' in r and 'disc' in r for r in log[2:])  # 2 reconstruction-only steps
    assert disc.steps.item() == 6 and not torch.equal(disc.stem.weight, start['stem.weight'])
    assert disc.ema_real.item() != 0 and 'aux' in vg.load_checkpoint(tmp_path / 'full' / 'ckpt.pt')
    with pytest.raises(_Interrupt):  # killed during step 5; the last checkpoint is from step 3
        run('cut', cut=4)
    resumed, disc2, opt2 = run('cut', resume=True)
    for a, b in ((full.state_dict(), resumed.state_dict()), (disc.state_dict(), disc2.state_dict())):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for a, b in zip(opt.state_dict()['state'].values(), opt2.state_dict()['state'].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_perceptual_loss_needs_a_network_and_scores_every_frame_with_it(tmp_path):
    net = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()))  # a stand-in feature net
    net.save(str(tmp_path / 'features.pt'))
    vcfg = tiny_vqvae(perceptual_weight=1.0).config
    _raises(ValueError, 'go together', lambda: vg.train_vqvae(vcfg, _tcfg(tmp_path / 'a', steps=1), _Clips()))
    vg.train_vqvae(vcfg, _tcfg(tmp_path / 'b', steps=2, perceptual_net=str(tmp_path / 'features.pt')), _Clips())
    log = [json.loads(line) for line in open(tmp_path / 'b' / 'metrics.jsonl')]
    assert len(log) == 2 and all(r['perceptual'] > 0 and 'gan' not in r for r in log)


def test_training_on_the_cpu_flushes_denormal_floats_to_zero():
    """Denormals (below 1.2e-38: a trained masked prior's tiniest attention weights) slowed its CPU steps 2.5x."""
    torch.set_flush_denormal(False)
    tiny = torch.tensor([1e-39])
    assert (tiny * 1.0).item() > 0  # the CPU keeps them by default
    assert vg.setup_device()[0].type == 'cpu' and (tiny * 1.0).item() == 0


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_mixed_precision_training_path_runs_on_the_cpu(dtype, tmp_path, monkeypatch):
    """The GPU's path through the real loop, on the CPU: autocast in bf16, or fp16 with a GradScaler. The EMA codebook
    stays fp32, every loss is finite, and the first step's loss (same weights, same batch) is close to fp32's."""
    # Latent depth 4, not 2: on some AVX512-BF16 CPUs, torch 2.13's bf16 Conv3d gives wrong weight gradients (NaN or
    # 100% off) when the input's depth is 2 or less; the library never autocasts on a CPU.
    def run(dt, sub):
        monkeypatch.setattr(vg, 'setup_device', lambda: (torch.device('cpu'), 0, 1, dt, dt == torch.float16))
        torch.manual_seed(0)
        vq = tiny_vqvae(downsample=(1, 2, 2))
        vq = vg.train(vq, 'vqvae', vg.vqvae_step, _Clips(), _tcfg(tmp_path / sub / 'vq', steps=3), vq.config)
        codes = vq.eval().encode(torch.stack([_Clips()[i]['video'] for i in range(8)]))
        torch.manual_seed(0)
        make = lambda: tiny_gpt(n_codes=32, latent_shape=(4, 4, 4))  # noqa: E731
        vg.train(make(), 'gpt', lambda m, b: (m(b['codes'])[1], {}), [{'codes': c} for c in codes],
                 _tcfg(tmp_path / sub / 'gpt', steps=3), cfg_of(make))
        losses = [[json.loads(line)['loss'] for line in open(tmp_path / sub / k / 'metrics.jsonl')] for k in ('vq', 'gpt')]
        return vq, losses
    _, ref = run(None, 'fp32')
    vq, low = run(dtype, str(dtype))
    assert all(b.dtype == torch.float32 for b in vq.codebook.buffers() if b.is_floating_point())
    scaled = 'scale' in vg.load_checkpoint(tmp_path / str(dtype) / 'gpt' / 'ckpt.pt')['scaler']
    assert scaled == (dtype == torch.float16)  # fp16's GradScaler ran (a CUDA-only one disables itself here)
    for stage in (0, 1):
        assert all(math.isfinite(v) for v in low[stage]) and len(low[stage]) == 3
        assert low[stage][0] == pytest.approx(ref[stage][0], rel=0.03), (stage, low[stage], ref[stage])


def test_optimizer_is_fused_adamw_with_decay_on_matrices_only():
    torch.manual_seed(0)
    model = vg.VideoGPT(vg.GPTConfig(n_codes=16, latent_shape=(2, 2, 2), n_layer=1, n_head=2, n_embd=16, dropout=0.0))
    tcfg = vg.TrainConfig(lr=1e-2, weight_decay=0.5)
    opt = vg.make_optimizer(model, tcfg, torch.device('cpu'))
    assert opt.defaults['fused']  # one kernel per step on the CPU too
    plain = copy.deepcopy(model)  # the same update by the textbook loop: decay on matrices and embeddings only
    ref = torch.optim.AdamW([dict(params=[p for p in plain.parameters() if p.ndim >= 2], weight_decay=0.5),
                             dict(params=[p for p in plain.parameters() if p.ndim < 2], weight_decay=0.0)],
                            lr=1e-2, betas=(0.9, 0.95), foreach=False)
    codes = torch.randint(0, 16, (3, 2, 2, 2))
    for m, o in ((model, opt), (plain, ref)):
        for _ in range(3):
            o.zero_grad()
            m(codes)[1].backward()
            o.step()
    for (name, a), b in zip(model.named_parameters(), plain.parameters()):
        if name == 'blocks.0.attn.qkv.bias':  # (q, k, v) biases of width 16 each; softmax ignores the key bias, so
            not_k = torch.arange(3 * 16) // 16 != 1  # its gradient is rounding noise that Adam scales up to +-lr
            a, b = a[not_k], b[not_k]
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    norm = dict(model.named_parameters())['blocks.0.ln1.weight']
    assert not torch.equal(norm, torch.ones_like(norm))  # the norms did move: the comparison is not vacuous


@pytest.mark.parametrize('kind', ['vqvae', 'gpt'])
def test_resume_continues_exactly(tmp_path, kind):
    if kind == 'vqvae':
        make, step_fn = tiny_vqvae, vg.vqvae_step
    else:  # dropout on: the RNG state must be restored too
        def make():
            return tiny_gpt(latent_shape=(4, 8, 8), n_codes=32, dropout=0.3)

        def step_fn(model, batch):
            codes = ((batch['video'][:, 0] + 0.5) * 31.99).long()  # any deterministic function of the video
            return model(codes)[1], {}
    full, resumed = _run_interrupted(kind, tmp_path, make, step_fn)
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


def test_a_run_folder_is_never_replaced_without_being_asked(tmp_path):
    vg.train(tiny_vqvae(), 'vqvae', vg.vqvae_step, _Clips(), _tcfg(tmp_path, steps=2), _tiny_vcfg())
    before = (tmp_path / 'ckpt.pt').read_bytes()
    _raises(FileExistsError, r'--resume true.*--overwrite true', lambda: vg.train(
        tiny_vqvae(), 'vqvae', vg.vqvae_step, _Clips(), _tcfg(tmp_path, steps=2), _tiny_vcfg()))
    assert (tmp_path / 'ckpt.pt').read_bytes() == before
    vg.train(tiny_vqvae(), 'vqvae', vg.vqvae_step, _Clips(), _tcfg(tmp_path, steps=2, overwrite=True), _tiny_vcfg())
    assert [json.loads(line)['step'] for line in open(tmp_path / 'metrics.jsonl')] == [1, 2]  # a fresh log
    for typo in ('ture', 'flase', ''):  # booleans are parsed strictly: a typo is an error, not False
        with pytest.raises(SystemExit):
            vg.main(['train-vqvae', '--out-dir', str(tmp_path), '--resume', typo])


def test_checkpoint_contents_and_reload(tmp_path):
    vg.train(tiny_vqvae(), 'vqvae', vg.vqvae_step, _Clips(), _tcfg(tmp_path), _tiny_vcfg())
    ckpt = vg.load_checkpoint(tmp_path / 'ckpt.pt')
    assert {'kind', 'config', 'model', 'optimizer', 'step', 'rng', 'train_config'} <= set(ckpt)
    assert not os.path.exists(str(tmp_path / 'ckpt.pt') + '.tmp')
    m = vg.load_model(tmp_path / 'ckpt.pt')
    assert isinstance(m, vg.VQVAE) and not m.training and m.codebook.initialized
    assert (tmp_path / 'metrics.jsonl').read_text().count('\n') == 6
    assert (tmp_path / 'loss.png').exists()


def test_exported_weights_load_and_pretrained_files_are_hash_checked(tmp_path, monkeypatch):
    vq = vg.train(tiny_vqvae(), 'vqvae', vg.vqvae_step, _Clips(), _tcfg(tmp_path / 'run'), _tiny_vcfg())
    vg.export_weights(tmp_path / 'run' / 'ckpt.pt', tmp_path / 'weights' / 'toy' / 'vqvae.pt')
    small = vg.load_checkpoint(tmp_path / 'weights' / 'toy' / 'vqvae.pt', 'vqvae')
    assert 'optimizer' not in small and all(v.dtype == torch.float16 for v in small['model'].values()
                                            if v.is_floating_point())
    x = video()
    with torch.no_grad():  # fp16 storage, fp32 model: the same reconstructions to fp16's precision
        torch.testing.assert_close(vg.load_model(tmp_path / 'weights' / 'toy' / 'vqvae.pt')(x)['x_hat'],
                                   vq.eval()(x)['x_hat'], atol=2e-2, rtol=0)
    digest = hashlib.sha256((tmp_path / 'weights' / 'toy' / 'vqvae.pt').read_bytes()).hexdigest()
    monkeypatch.setattr(vg, '__file__', str(tmp_path / 'videogpt.py'))  # weights/ beside it
    monkeypatch.setitem(vg.PRETRAINED, 'toy', {'vqvae.pt': digest})
    (loaded,) = vg.load_pretrained('toy')
    assert isinstance(loaded, vg.VQVAE) and not loaded.training
    monkeypatch.setitem(vg.PRETRAINED, 'toy', {'vqvae.pt': '0' * 64})
    _raises(ValueError, 'has sha256 .* expected 0000', lambda: vg.load_pretrained('toy'))
    _raises(ValueError, 'choose one of', lambda: vg.load_pretrained('imagenet'))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    def step_fn(model, batch):
        loss, metrics = vg.vqvae_step(model, batch)
        return (loss * float('nan') if model.codebook.cluster_size.sum() and step_fn.n >= 4 else loss), metrics
    step_fn.n = 0

    def counting(model, batch):
        step_fn.n += 1
        return step_fn(model, batch)
    with pytest.raises(FloatingPointError, match=r'last good state.*--resume'):
        vg.train(tiny_vqvae(), 'vqvae', counting, _Clips(), _tcfg(tmp_path), _tiny_vcfg())
    ckpt = vg.load_checkpoint(tmp_path / 'ckpt.pt')
    assert ckpt['step'] == 3
    assert all(torch.isfinite(v).all() for v in ckpt['model'].values() if v.is_floating_point())


def test_lr_schedule_warmup_then_cosine():
    t = vg.TrainConfig(lr=1.0, warmup=10, steps=110)
    lrs = [vg.lr_at(s, t) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_prior_trains_on_frozen_vqvae_and_codes_file(tmp_path):
    vq = vg.train(tiny_vqvae(), 'vqvae', vg.vqvae_step, _Clips(), _tcfg(tmp_path / 'vq', steps=3), _tiny_vcfg())
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vcfg = vq.config
    gcfg = vg.GPTConfig(n_codes=vcfg.n_codes, latent_shape=vcfg.latent_shape, n_layer=1, n_head=2, n_embd=16,
                        cond_dim=3)
    tcfg = _tcfg(tmp_path / 'gpt', steps=4, vqvae=str(tmp_path / 'vq' / 'ckpt.pt'),
                 codes_file=str(tmp_path / 'codes.pt'), sample_every=4)
    data = _Clips(with_label=True)
    gpt = vg.train_gpt(gcfg, tcfg, dataset=data)
    ckpt = vg.load_checkpoint(tmp_path / 'gpt' / 'ckpt.pt')
    assert ckpt['vqvae'] == str((tmp_path / 'vq' / 'ckpt.pt').resolve())  # a reference, not a copy
    assert not any(k.startswith('vqvae') for k in ckpt['model'])
    assert (tmp_path / 'gpt' / 'samples.gif').exists()
    encoded = torch.load(tmp_path / 'codes.pt', weights_only=True)
    assert encoded['codes'].shape == (16, *vcfg.latent_shape) and encoded['label'].shape == (16,)
    # the VQ-VAE on disk is untouched by stage 2
    after = vg.load_checkpoint(tmp_path / 'vq' / 'ckpt.pt')['model']
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(gpt, vg.VideoGPT)


def test_codes_file_keeps_the_encoded_window_for_frame_conditioning(tmp_path):
    vq, clips = tiny_vqvae().eval(), _Clips(with_start=True)  # random 4-frame windows of 6-frame clips
    encoded = data.encode_dataset(vq, clips, tmp_path / 'codes.pt', n_frames=2)
    ds = data.CodesDataset(clips, encoded, keep_video=True)
    starts = set()
    for i in range(len(ds)):
        item, s = ds[i], int(ds[i]['start'])
        starts.add(s)
        assert torch.equal(item['codes'], vq.encode(clips.videos[i:i + 1, :, s:s + 4])[0])
        assert (item['video'] - clips.videos[i, :, s:s + 2]).abs().max() <= 0.5 / 255 + 1e-6  # the same window
    assert len(starts) > 1  # the windows really were random
    bare = data.encode_dataset(vq, clips, tmp_path / 'bare.pt')  # no frames stored: refused, not mismatched
    _raises(ValueError, 'random windows.*n_frames', lambda: data.CodesDataset(clips, bare, keep_video=True))


def test_codes_file_is_not_reused_for_another_vqvae(tmp_path, capsys):
    vq, data_ = tiny_vqvae().eval(), _Clips()
    first = data.encode_dataset(vq, data_, tmp_path / 'codes.pt')
    again = data.encode_dataset(vq, data_, tmp_path / 'codes.pt')
    assert torch.equal(first['codes'], again['codes']) and 'encoding again' not in capsys.readouterr().out
    vq.codebook.embeddings.mul_(-1)  # "retrained": another codebook
    data.encode_dataset(vq, data_, tmp_path / 'codes.pt')
    assert 'encoding again' in capsys.readouterr().out


def test_masked_prior_rejects_causal_only_sampling_options():
    with pytest.raises(ValueError, match='sample_masked'):
        tiny_gpt(causal=False).sample(1, top_k=5)


def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist
    if rank == 0:  # a slow disk: rank 1 must still find this checkpoint when it resumes below
        save = vg.save_checkpoint

        def slow_save(*args, **kwargs):
            time.sleep(1)
            save(*args, **kwargs)
        vg.save_checkpoint = slow_save
    tcfg = vg.TrainConfig(out_dir=out_dir, steps=1, batch_size=2, lr=1e-3, warmup=1, ckpt_every=100,
                          sample_every=100, log_every=100, num_workers=0, seed=5)
    # each rank sees different data (the sampler is seeded by rank), so only synchronisation can make them agree
    model = vg.train(tiny_vqvae(), 'vqvae', vg.vqvae_step, _Clips(), tcfg, _tiny_vcfg())
    torch.save(model.state_dict(), os.path.join(out_dir, f'rank{rank}-step1.pt'))
    tcfg = vg.TrainConfig(**dict(vars(tcfg), steps=4, resume=True))  # three more steps, resumed under DDP
    model = vg.train(tiny_vqvae(), 'vqvae', vg.vqvae_step, _Clips(), tcfg, _tiny_vcfg())
    torch.save(model.state_dict(), os.path.join(out_dir, f'rank{rank}.pt'))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_cpu_ranks_hold_identical_weights_and_codebooks(tmp_path):
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    a, b, first = (torch.load(tmp_path / f'{name}.pt', weights_only=True) for name in ('rank0', 'rank1', 'rank0-step1'))
    assert a['codebook.initialized']
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and training did something: between step 1 and step 4 the codebook and the weights moved, identically on both
    assert (a['codebook.embeddings'] - first['codebook.embeddings']).abs().max() > 1e-4
    assert not torch.equal(a['encoder.convs.0.weight'], first['encoder.convs.0.weight'])


@pytest.fixture
def mnist_dir(tmp_path):
    """A folder of MNIST-format IDX files (font-rendered digits): what --mnist-dir expects, made without network."""
    images, labels = data.render_font_digits(64)
    _data_write_idx(tmp_path / 'train-images-idx3-ubyte.gz', images, 2051)
    _data_write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', labels.astype('uint8'), 2049)
    return tmp_path


def _cli(*args):
    r = subprocess.run([sys.executable, os.path.join(HERE, 'videogpt.py'), *map(str, args)], capture_output=True,
                       text=True, cwd=HERE, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_command_line_train_both_stages_then_sample(tmp_path, mnist_dir):
    common = ['--preset', 'demo', '--mnist-dir', mnist_dir, '--steps', 2, '--batch-size', 2, '--num-workers', 0,
              '--warmup', 1, '--n-digits', 1]  # one digit per video: its class conditions the demo's prior
    _cli('train-vqvae', *common, '--out-dir', tmp_path / 'vq', '--n-hiddens', 16)  # a flag overrides the preset
    assert vg.load_model(tmp_path / 'vq' / 'ckpt.pt').config.n_hiddens == 16
    _cli('train-gpt', *common, '--out-dir', tmp_path / 'gpt', '--vqvae', tmp_path / 'vq' / 'ckpt.pt',
         '--n-layer', 1)
    assert (tmp_path / 'gpt' / 'samples.gif').exists() and (tmp_path / 'vq' / 'recon.png').exists()
    _cli('sample', '--gpt', tmp_path / 'gpt' / 'ckpt.pt', '--n', 2, '--out', tmp_path / 's.gif', '--top-k', 5,
         '--labels', 3, 7, '--guidance', 2)  # the demo preset trains with cond_dropout, so guidance is open to it
    import imageio.v3 as iio
    frames = iio.imread(tmp_path / 's.gif')
    assert frames.shape[0] == 8  # one GIF frame per video frame of the demo preset
    _cli('sample', '--gpt', tmp_path / 'gpt' / 'ckpt.pt', '--n', 2, '--out', tmp_path / 'long.gif', '--labels', 1,
         '--frames', 14)  # longer than the 8-frame window: the prior slides, the decoder stitches windows
    assert iio.imread(tmp_path / 'long.gif').shape[0] == 14
    for frames in ('13', '6'):  # not a multiple of the demo's time downsampling (2); shorter than the window
        with pytest.raises(SystemExit, match='multiple of 2'):
            vg.main(['sample', '--gpt', str(tmp_path / 'gpt' / 'ckpt.pt'), '--frames', frames, '--labels', '1'])


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # torch.jit: the format the I3D file comes in
def test_eval_command_scores_reconstruction_prediction_and_fvd(tmp_path, mnist_dir, capsys):
    common = ['--preset', 'demo', '--mnist-dir', mnist_dir, '--steps', 2, '--batch-size', 2, '--num-workers', 0,
              '--warmup', 1, '--n-digits', 1]
    vg.main(['train-vqvae', *map(str, common), '--out-dir', str(tmp_path / 'vq'), '--n-hiddens', '16'])
    vg.main(['train-gpt', *map(str, common), '--out-dir', str(tmp_path / 'gpt'), '--n-layer', '1', '--cond-dim', '0',
             '--cond-dropout', '0', '--vqvae', str(tmp_path / 'vq' / 'ckpt.pt')])  # unconditional: any videos
    torch.jit.script(_StandInI3D()).save(str(tmp_path / 'i3d.pt'))
    seq = np.random.default_rng(0).integers(0, 256, (12, 3, 64, 64), dtype=np.uint8)  # (T, N, 64, 64), time first
    np.save(tmp_path / 'seq.npy', seq)

    def run(*a):
        vg.main(['eval', '--vqvae', str(tmp_path / 'vq' / 'ckpt.pt'), '--n', '3', '--batch-size', '2', '--json',
                 str(tmp_path / 'e.json'), *map(str, a)])
        return json.loads((tmp_path / 'e.json').read_text())
    scores = run('--gpt', tmp_path / 'gpt' / 'ckpt.pt', '--context', 4, '--future', 6, '--i3d', tmp_path / 'i3d.pt')
    uniform = math.log2(vg.preset_configs('demo')[0].n_codes)  # log2 of the demo VQ-VAE's book
    assert scores['4->6 mse'] > 0 and scores['uniform_bits'] == uniform and scores['fvd'] > 0 and scores['videos'] == 3
    held = data.make_dataset(vg.TrainConfig(mnist_dir=str(mnist_dir), n_digits=1), 8, 64, train=False)
    batch = torch.utils.data.default_collate([held[i] for i in range(3)])
    want = vg.evaluate(vg.load_model(tmp_path / 'vq' / 'ckpt.pt'), vg.load_model(tmp_path / 'gpt' / 'ckpt.pt'),
                       batch['video'])
    assert all(scores[k] == pytest.approx(v, rel=1e-5) for k, v in want.items())
    import imageio.v3 as iio
    assert iio.imread(tmp_path / 'e.gif').shape[0] == 10  # 4 real frames + 6 predicted, past the 8-frame window
    assert 'bits_per_token' in capsys.readouterr().out
    on_file = run('--gpt', tmp_path / 'gpt' / 'ckpt.pt', '--context', 4, '--future', 6, '--test-seq',
                  tmp_path / 'seq.npy', '--top-k', 1)  # noise videos: predictions far from them
    x = torch.as_tensor(seq[:10]).permute(1, 0, 2, 3)[:, None].float() / 255 - 0.5  # (3, 1, 10, 64, 64)
    pred = vg.predict_frames(vg.load_model(tmp_path / 'vq' / 'ckpt.pt'), vg.load_model(tmp_path / 'gpt' / 'ckpt.pt'),
                             x[:, :, :4], 6, top_k=1)  # greedy: the same tokens in any batch
    assert on_file['4->6 mse'] == pytest.approx(vg.prediction_scores(pred, x[:, :, 4:])['mse'].mean().item(), rel=1e-4)
    vq_only = run()  # no prior: reconstruction scores only
    assert 'bits_per_token' not in vq_only and '10->10 mse' not in vq_only and vq_only['videos'] == 3
    # The demo's class-conditional prior, trained with the null condition, predicts the unlabelled file without one
    vg.main(['train-gpt', *map(str, common), '--out-dir', str(tmp_path / 'cond'), '--n-layer', '1',
             '--vqvae', str(tmp_path / 'vq' / 'ckpt.pt')])
    untold = run('--gpt', tmp_path / 'cond' / 'ckpt.pt', '--context', 4, '--future', 6, '--test-seq',
                 tmp_path / 'seq.npy', '--top-k', 1)
    pred = vg.predict_frames(vg.load_model(tmp_path / 'vq' / 'ckpt.pt'), vg.load_model(tmp_path / 'cond' / 'ckpt.pt'),
                             x[:, :, :4], 6, top_k=1)
    assert untold['4->6 mse'] == pytest.approx(vg.prediction_scores(pred, x[:, :, 4:])['mse'].mean().item(), rel=1e-4)


def test_sample_labels_give_each_video_its_classes_one_or_two():
    vcfg = vg.VQVAEConfig(sequence_length=8, downsample=(2, 8, 8), n_hiddens=16)
    ckpt = dict(config=vg.asdict(vg.fit_prior(vg.GPTConfig(cond_dim=10, cond_dropout=0.1), vcfg)))
    cond = lambda *flags: data.sample_inputs(vg.build_parser().parse_args(  # noqa: E731
        ['sample', '--gpt', 'g.pt', '--n', '3', *flags]), ckpt, vcfg)[2]
    assert cond('--labels', '3,7', '1,2').tolist() == [[3, 7], [1, 2], [3, 7]]  # cycled over the 3 videos
    assert cond('--labels', '3', '7').tolist() == [3, 7, 3]
    assert cond() is None  # trained with the null condition: sampled without one


def test_sample_command_with_frames_from_a_video_file_and_an_actions_file(tmp_path):
    vq = vg.train(tiny_vqvae(), 'vqvae', vg.vqvae_step, _Clips(), _tcfg(tmp_path / 'vq', steps=2), _tiny_vcfg())
    vcfg = vq.config
    gcfg = vg.GPTConfig(n_codes=vcfg.n_codes, latent_shape=vcfg.latent_shape, n_layer=1, n_head=2, n_embd=16,
                        n_cond_frames=1, frame_channels=1, frame_size=8, cond_dim=16)
    vg.train_gpt(gcfg, _tcfg(tmp_path / 'gpt', steps=2, vqvae=str(tmp_path / 'vq' / 'ckpt.pt')),
                 dataset=_Clips(with_actions=True))
    clip = np.zeros((5, 16, 16, 3), np.uint8)
    clip[:, 4:12, 4:12] = 255  # a white square: after resizing to 8x8, the centre 4x4 is white
    _data_write_video(tmp_path / 'clip.gif', clip)
    np.save(tmp_path / 'actions.npy', np.zeros((4, 4), np.float32))
    args = ['sample', '--gpt', tmp_path / 'gpt' / 'ckpt.pt', '--n', 2, '--out', tmp_path / 's.gif']
    with pytest.raises(SystemExit, match='--frames-from'):
        vg.main(list(map(str, args)))
    with pytest.raises(SystemExit, match='--actions'):
        vg.main(list(map(str, args + ['--frames-from', tmp_path / 'clip.gif'])))
    vg.main(list(map(str, args + ['--frames-from', tmp_path / 'clip.gif', '--actions', tmp_path / 'actions.npy'])))
    out = iio.imread(tmp_path / 's.gif')  # (T, grid H, grid W, 3)
    assert out.shape[0] == 4
    tile = out[0, 1:9, 1:9]  # the first video's first frame, inside the grid's 1-pixel border
    assert tile[3:5, 3:5].min() > 200 and tile[0, 0].max() < 50  # the given frame is shown as it is


def test_sample_command_completes_a_video_for_a_task_and_outlines_the_given_region(tmp_path):
    clip = np.zeros((4, 8, 8, 3), np.uint8)
    clip[:, 2:6, 2:6] = 255
    clip[np.arange(4), 0, np.arange(4)] = 120  # frames that differ: a GIF writer merges identical ones
    (tmp_path / 'videos').mkdir()
    for i in range(3):
        _data_write_video(tmp_path / 'videos' / f'{i}.gif', np.roll(clip, i, axis=2))
    common = ['--steps', 2, '--batch-size', 2, '--num-workers', 0, '--dataset', 'folder', '--data-dir',
              tmp_path / 'videos']
    vg.main(list(map(str, ['train-vqvae', '--out-dir', tmp_path / 'vq', '--in-channels', 3, '--sequence-length', 4,
                           '--resolution', 8, '--downsample', 2, 2, 2, '--n-hiddens', 16, '--n-res-layers', 1,
                           '--embedding-dim', 8, '--n-codes', 32, *common])))
    vq_path = tmp_path / 'vq' / 'ckpt.pt'
    vg.main(list(map(str, ['train-gpt', '--vqvae', vq_path, '--out-dir', tmp_path / 'gpt', '--causal', 'false',
                           '--tasks', 'fp', 'opc', '--n-layer', 1, '--n-embd', 16, '--n-head', 2, *common])))
    gpt_path = tmp_path / 'gpt' / 'ckpt.pt'
    assert vg.load_model(gpt_path).config.tasks == ('fp', 'opc')
    _data_write_video(tmp_path / 'clip.gif', clip)
    out = tmp_path / 'done.gif'
    vg.main(list(map(str, ['sample', '--gpt', gpt_path, '--task', 'opc', '--from', tmp_path / 'clip.gif',
                           '--n', 2, '--steps', 3, '--out', out])))
    grid = iio.imread(out)  # (T, 2 rows of 10, 2 columns of 10, 3): real videos on top, completions below
    assert grid.shape == (4, 20, 20, 3)
    green = (np.abs(grid.astype(int) - (40, 220, 40)) <= 24).all(-1)  # the outline's colour, after the GIF palette
    assert not green[:, :10].any()  # the real row has no outline
    assert green[:, 13, 13].all() and green[:, 13, 16].all() and not green[:, 14, 14].any()  # the box's edge
    with pytest.raises(SystemExit):  # --out with a suffix we cannot write fails before any sampling
        vg.main(list(map(str, ['sample', '--gpt', gpt_path, '--out', tmp_path / 'x.jpg'])))
    with pytest.raises(SystemExit):
        vg.main(list(map(str, ['sample', '--gpt', gpt_path, '--task', 'opc'])))  # --task without --from
    with pytest.raises(SystemExit, match='no vector conditioning: drop --actions and --labels'):
        vg.main(list(map(str, ['sample', '--gpt', gpt_path, '--labels', 3, '--out', tmp_path / 'x.gif'])))
    (tmp_path / 'moved').mkdir()  # a moved run folder still finds its VQ-VAE, relative to the prior's folder
    os.replace(tmp_path / 'gpt', tmp_path / 'moved' / 'gpt')
    os.replace(tmp_path / 'vq', tmp_path / 'moved' / 'vq')
    assert vg.find_vqvae(tmp_path / 'moved' / 'gpt' / 'ckpt.pt') == str(tmp_path / 'moved' / 'gpt' / '../vq/ckpt.pt')
    _raises(ValueError, "holds a 'vqvae' model where a 'gpt' one", lambda: vg.find_vqvae(tmp_path / 'moved' / 'vq' / 'ckpt.pt'))
    os.replace(tmp_path / 'moved' / 'vq', tmp_path / 'elsewhere')
    _raises(FileNotFoundError, 'pass --vqvae PATH', lambda: vg.find_vqvae(tmp_path / 'moved' / 'gpt' / 'ckpt.pt'))


def test_command_line_errors_name_the_fix(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(HERE, 'videogpt.py'), 'train-gpt', '--preset', 'demo'],
                       capture_output=True, text=True, cwd=HERE)
    assert r.returncode != 0 and '--vqvae' in r.stderr
    with pytest.raises(ValueError, match='unknown preset.*bair-8x32x32'):
        vg.preset_configs('bair')
    with pytest.raises(FileNotFoundError, match='no checkpoint at'):
        vg.load_model(tmp_path / 'missing.pt')


# ------------------------------------------------------------------------------------------------------------------
# Nothing silent: inputs that disagree, bounds, outputs that never destroy inputs, files; every flag's bad values


def test_evaluate_refuses_what_it_would_score_wrongly_and_scores_constant_videos():
    vq = tiny_vqvae().eval()
    g = tiny_gpt(n_codes=32, latent_shape=vq.config.latent_shape, cond_dim=4).eval()
    x, labels = video(B=4), torch.tensor([0, 1, 2, 3])
    _raises(ValueError, r'4 videos and 2 cond: .*one cond', lambda: vg.evaluate(vq, g, x, labels[:2], 2))
    _raises(ValueError, 'video is empty', lambda: vg.evaluate(vq, None, x[:0]))
    _raises(ValueError, 'batch_size=0', lambda: vg.evaluate(vq, None, x, batch_size=0))
    flat = vg.evaluate(vq, None, torch.zeros(2, 1, 4, 8, 8))  # no variance to normalise by: NMSE is undefined
    assert math.isnan(flat['nmse']) and 0 < flat['psnr'] <= 100


def test_sampling_needs_at_least_one_video_and_bounded_knobs_for_its_kind_of_prior():
    g, gm = tiny_gpt(), tiny_gpt(causal=False)  # 2x3x3 = 18 tokens
    for model in (g, gm):
        for n in (0, -1):
            _raises(ValueError, r'n=-?\d: sample at least one video', lambda: model.sample(n))
    _raises(ValueError, 'at most the 18 tokens', lambda: gm.sample(1, steps=19))  # passes that decide nothing
    _raises(ValueError, 'causal priors only', lambda: vg.check_knobs(gm.config, top_p=0.9))
    guided = tiny_gpt(cond_dim=2, cond_dropout=0.1).config
    _raises(ValueError, 'needs a finite value', lambda: vg.check_knobs(guided, guidance=float('nan')))


def test_fvd_refuses_videos_it_cannot_score():
    x, i3d = torch.rand(3, 1, 2, 16, 16) - 0.5, _StandInI3D()
    for bad, pattern in ((x * 255, r'\[-0.5, 0.5\]'), (x[:1], r'N >= 2 per set'), (x[:, 0], r'N >= 2 per set'),
                         (x[:0], 'empty'), (x * float('nan'), 'NaN'), (x.expand(-1, 2, -1, -1, -1), 'C 1 or 3')):
        _raises(ValueError, pattern, lambda: vg.fvd(bad, x, i3d))
        _raises(ValueError, pattern, lambda: vg.fvd(x, bad, i3d))


def test_predict_frames_refuses_a_context_shorter_than_one_latent_frame():
    vq = tiny_vqvae(sequence_length=8).eval()  # time downsampling 2: one context frame reaches no latent frame
    g = tiny_gpt(n_codes=32, latent_shape=(4, 4, 4)).eval()
    _raises(ValueError, r'at least 2 context frames: one latent frame \(the VQ-VAE downsamples time by 2\)',
            lambda: vg.predict_frames(vq, g, video(T=1), 4, top_k=1))
    assert vg.predict_frames(vq, g, video(T=2), 2, top_k=1).shape == (2, 1, 2, 8, 8)
    framed = tiny_gpt(n_codes=32, latent_shape=(4, 4, 4), n_cond_frames=1, frame_channels=1, frame_size=8).eval()
    assert vg.predict_frames(vq, framed, video(T=1), 2, top_k=1).shape == (2, 1, 2, 8, 8)  # its frame reaches it


def test_atomic_write_creates_its_temporary_file_exclusively_and_cleans_up(tmp_path, monkeypatch):
    target, elsewhere = tmp_path / 'scores.json', tmp_path / 'elsewhere.txt'
    elsewhere.write_text('keep me')
    target.symlink_to(elsewhere)  # a link planted at the path: replaced, never followed
    (tmp_path / f'scores.json.{os.getpid()}.tmp').symlink_to(elsewhere)  # and at the old, predictable temporary name
    stale, live = tmp_path / '.scores.json.killed.tmp', tmp_path / '.scores.json.writing.tmp'
    stale.write_text('half a file')
    live.write_text('another writer, now')
    os.utime(stale, (time.time() - 3600,) * 2)  # left by a writer killed an hour ago
    data.write_json(target, {'a': 1})
    assert elsewhere.read_text() == 'keep me' and not target.is_symlink() and json.loads(target.read_text()) == {'a': 1}
    assert not stale.exists() and live.exists()
    assert target.stat().st_mode & 0o777 == 0o666 & ~data.UMASK  # as open() would have made it

    def full_disk(obj, path):  # how torch.save reports a full disk or a file size limit
        open(path, 'wb').write(b'half a checkpoint')
        raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598')
    monkeypatch.setattr(torch, 'save', full_disk)
    _raises(OSError, r'could not write .*ckpt.pt \(RuntimeError: .*unexpected pos.*free some disk space',
            lambda: data.save_checkpoint(tmp_path / 'ckpt.pt', step=1))
    assert not list(tmp_path.glob('.ckpt.pt*')) and not (tmp_path / 'ckpt.pt').exists()


def test_a_file_size_limit_during_a_checkpoint_write_is_a_clear_error(tmp_path):
    code = ("import resource, torch, data; resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); "
            f"data.save_checkpoint({str(tmp_path / 'ckpt.pt')!r}, x=torch.zeros(100_000))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=HERE)
    assert r.returncode == 1 and re.search(r'OSError: could not write .*ckpt.pt .*free some disk space', r.stderr)
    assert os.listdir(tmp_path) == []  # no temporary file left


def test_load_pretrained_loads_the_bytes_it_hashed_and_names_a_missing_file(tmp_path, monkeypatch):
    path = tmp_path / 'weights' / 'toy' / 'vqvae.pt'
    path.parent.mkdir(parents=True)
    m = tiny_vqvae()
    data.save_checkpoint(path, kind='vqvae', config=vg.asdict(m.config), model=m.state_dict())
    monkeypatch.setattr(vg, '__file__', str(tmp_path / 'videogpt.py'))  # weights/ beside it
    monkeypatch.setitem(vg.PRETRAINED, 'toy', {'vqvae.pt': hashlib.sha256(path.read_bytes()).hexdigest()})
    loaded, load = [], torch.load
    monkeypatch.setattr(torch, 'load', lambda f, *a, **k: loaded.append(f) or load(f, *a, **k))
    (vq,) = vg.load_pretrained('toy')
    assert isinstance(vq, vg.VQVAE) and len(loaded) == 1 and not isinstance(loaded[0], (str, os.PathLike))
    path.unlink()
    _raises(FileNotFoundError, r'vqvae.pt cannot be read \(No such file.*git checkout',
            lambda: vg.load_pretrained('toy'))
    path.mkdir()  # a folder in its place
    _raises(FileNotFoundError, r'vqvae.pt cannot be read \(Is a directory.*git checkout',
            lambda: vg.load_pretrained('toy'))


def test_codes_file_never_replaces_a_file_that_is_not_a_codes_file(tmp_path):
    vq, ckpt, notes = tiny_vqvae().eval(), tmp_path / 'ckpt.pt', tmp_path / 'notes.txt'
    data.save_checkpoint(ckpt, kind='vqvae', config={}, model={})
    notes.write_text('my notes')
    before = ckpt.read_bytes()
    _raises(ValueError, r'ckpt.pt is not a codes file \(KeyError.*left as it is: pass a new --codes-file',
            lambda: data.encode_dataset(vq, _Clips(), ckpt))
    _raises(ValueError, 'notes.txt is not a codes file', lambda: data.encode_dataset(vq, _Clips(), notes))
    assert ckpt.read_bytes() == before and notes.read_text() == 'my notes'


@pytest.fixture(scope='module')
def cli(tmp_path_factory):
    """Tiny files for the command line: a VQ-VAE (3x4x8x8 videos -> 2x4x4 codes, time downsampled by 2) and three
    priors of it: class-conditional causal 'ar', unconditioned causal 'nc', masked 'mk'; a 64x64 grey VQ-VAE and an
    unconditioned prior for --test-seq; their data, a folder of videos in 3 classes (6 held-out clips); bad files."""
    root = tmp_path_factory.mktemp('cli')
    clip = np.zeros((8, 8, 8, 3), np.uint8)
    clip[np.arange(8), :, np.arange(8)] = 255  # a bar moving across: every frame differs
    for i, c in enumerate('abc'):
        _data_write_video(root / 'videos' / c / f'{i}.gif', np.roll(clip, i, axis=1))
    tcfg = vg.asdict(vg.TrainConfig(dataset='folder', data_dir=str(root / 'videos')))
    f = {k: str(root / k) for k in ('videos', 'seq.npy', 'objects.npy', 'state_dict.pt', 'file', 'foreign.json',
                                    'orphan.json', 'out')}

    def save(name, model, **gpt):
        f[name] = str(root / f'{name}.pt')
        data.save_checkpoint(f[name], kind='gpt' if gpt else 'vqvae', config=vg.asdict(model.config),
                             model=model.state_dict(), train_config=tcfg, **gpt)
    save('vq', tiny_vqvae(in_channels=3))
    save('vq64', tiny_vqvae(resolution=64, downsample=(2, 8, 8)))
    for name, kw in (('ar', dict(cond_dim=3)), ('nc', {}), ('mk', dict(causal=False, tasks=('fp', 'opc')))):
        save(name, tiny_gpt(n_codes=32, latent_shape=(2, 4, 4), **kw), vqvae=f['vq'], vqvae_rel='vq.pt')
    save('nc64', tiny_gpt(n_codes=32, latent_shape=(2, 8, 8)), vqvae=f['vq64'], vqvae_rel='vq64.pt')
    np.save(f['seq.npy'], np.zeros((6, 2, 64, 64), np.uint8))  # Moving MNIST's layout (T, N, 64, 64): 2 videos
    np.save(f['objects.npy'], np.array([{'a': 1}], dtype=object), allow_pickle=True)
    torch.save(tiny_vqvae().state_dict(), f['state_dict.pt'])  # weights, not a TorchScript network
    for name, text in (('file', 'a file where a folder should be'), ('foreign.json', '{"mine": 1}')):
        (root / name).write_text(text)
    (root / 'orphan.gif').write_bytes(b'GIF89a, not ours')  # no orphan.json beside it
    (root / 'out').mkdir()
    return f


class _Reached(Exception):
    """Raised where a command's work starts: every check must have run before."""


@pytest.fixture
def at_work(monkeypatch, tmp_path):
    def reached(*args, **kwargs):
        raise _Reached('the work started')
    for owner, name in ((vg, 'train'), (vg, 'train_vqvae'), (vg, 'evaluate'), (vg.VideoGPT, '_frame_kv')):
        monkeypatch.setattr(owner, name, reached)  # training, the demo, scoring, sampling (after its checks)
    monkeypatch.setattr(data, 'CACHE_DIR', tmp_path)  # the folder datasets' decoded videos


def test_demo_trains_its_vqvae_600_steps_at_2e3_unless_its_flags_say_otherwise(monkeypatch, tmp_path):
    seen = []

    def first_stage(vcfg, tcfg, *args, **kwargs):  # the demo's VQ-VAE training: record its schedule, go no further
        seen.append((tcfg.steps, tcfg.lr))
        raise _Reached('the work started')
    monkeypatch.setattr(vg, 'train_vqvae', first_stage)
    for flags in ([], ['--vqvae-steps', 7, '--vqvae-lr', 3e-3]):
        with pytest.raises(_Reached):
            vg.main(['demo', '--out-dir', str(tmp_path / 'demo'), '--mnist-dir', str(tmp_path), *map(str, flags)])
    assert seen == [(600, 2e-3), (7, 3e-3)]


def _cli_bases(f):
    out, tiny = f['out'], ['--in-channels', 3, '--sequence-length', 4, '--resolution', 8, '--downsample', 2, 2, 2,
                           '--n-hiddens', 16, '--n-res-layers', 1, '--embedding-dim', 8, '--n-codes', 32]
    data_ = ['--dataset', 'folder', '--data-dir', f['videos'], '--num-workers', 0]
    return {'train-vqvae': ['train-vqvae', '--out-dir', out + '/tv', *data_, *tiny],
            'train-gpt': ['train-gpt', '--vqvae', f['vq'], '--out-dir', out + '/tg', *data_, '--n-layer', 1,
                          '--n-embd', 16, '--n-head', 2],
            'sample': ['sample', '--gpt', f['nc'], '--out', out + '/s.gif'],
            'eval': ['eval', '--vqvae', f['vq'], '--n', 2, '--json', out + '/e.json'],
            'demo': ['demo', '--out-dir', out + '/demo', '--mnist-dir', f['videos']]}


def _cli_table(f):
    """(command, flag, arguments after the command's base ones, exit code, message): a set of bad values per flag."""
    nowhere, dud = '/nonexistent/x', f['file'] + '/x'  # a missing folder; a path under a file
    train = [('--out-dir', [dud], 1, 'cannot write in'), ('--steps', [0], 2, r'steps=0: it must be at least 1'),
             ('--batch-size', [0], 2, 'batch_size=0'), ('--lr', [0], 2, 'lr and grad_clip must be > 0'),
             ('--lr', ['nan'], 2, 'lr and grad_clip'), ('--warmup', [-1], 2, 'warmup=-1'),
             ('--weight-decay', [-1], 2, 'weight_decay=-1'), ('--grad-clip', [0], 2, 'lr and grad_clip'),
             ('--log-every', [0], 2, 'log_every=0'), ('--sample-every', [0], 2, 'sample_every=0'),
             ('--ckpt-every', [0], 2, 'ckpt_every=0'), ('--seed', [-1], 2, 'seed=-1'),
             ('--seed', [2 ** 64], 2, 'below 4294967296'), ('--num-workers', [-1], 2, 'num_workers=-1'),
             ('--compile', ['maybe'], 2, 'not a boolean'), ('--resume', ['ture'], 2, 'not a boolean'),
             ('--overwrite', ['x'], 2, 'not a boolean'), ('--dataset', ['bogus'], 1, 'unknown dataset'),
             ('--data-dir', [nowhere], 1, 'no such folder'), ('--mnist-dir', [nowhere], 1, 'no such folder'),
             ('--n-digits', [0], 2, 'n_digits=0'), ('--dataset-size', [-1], 2, 'dataset_size=-1')]
    vqvae = [('--preset', ['bogus'], 2, 'invalid choice'), ('--in-channels', [0], 2, 'in_channels=0'),
             ('--sequence-length', [0], 2, 'sequence_length=0'), ('--sequence-length', [5], 2, 'not divisible'),
             ('--resolution', [0], 2, 'resolution=0'), ('--downsample', [3, 4, 4], 2, 'powers of 2'),
             ('--downsample', [2, 2], 2, 'expected 3 arguments'), ('--n-hiddens', [1], 2, 'at least 2'),
             ('--n-hiddens', [15], 2, 'divisible by n_head'), ('--n-res-layers', [-1], 2, 'n_res_layers=-1'),
             ('--n-head', [0], 2, 'n_head=0'), ('--axial-attention', ['maybe'], 2, 'not a boolean'),
             ('--embedding-dim', [0], 2, 'embedding_dim=0'), ('--n-codes', [0], 2, 'n_codes=0'),
             ('--n-codes', [40_000], 2, 'below 32769'), ('--beta', [-1], 2, 'beta=-1'),
             ('--ema-decay', [1], 2, 'below 1'), ('--dead-code-threshold', [-1], 2, 'dead_code_threshold=-1'),
             ('--padding', ['same'], 2, "use 'zeros' or 'reflect'"), ('--time-downsample', ['mid'], 2, "'early' or"),
             ('--padding', ['reflect', '--downsample', 4, 2, 2], 2, 'every latent axis needs 2 or more'),
             ('--gan-weight', [-1], 2, 'gan_weight=-1'), ('--lecam-weight', [0.1], 2, 'set gan_weight > 0 too'),
             ('--gan-warmup', [-1], 2, 'gan_warmup=-1'), ('--perceptual-weight', [1], 2, 'go together'),
             ('--perceptual-weight', [-1], 2, 'perceptual_weight=-1'), ('--perceptual-net', [nowhere, '--perceptual-weight', 1], 1, 'no such'),
             ('--perceptual-net', [f['vq'], '--perceptual-weight', 1], 1, 'not a TorchScript network')]
    gpt = [('--preset', ['bogus'], 2, 'invalid choice'), ('--n-layer', [0], 2, 'n_layer=0'),
           ('--n-head', [0], 2, 'n_head=0'), ('--n-head', [3], 2, 'divisible by n_head=3'),
           ('--n-embd', [0], 2, 'n_embd=0'), ('--dropout', [1], 2, 'below 1'),
           ('--attn-dropout', [-0.5], 2, 'attn_dropout=-0.5'), ('--causal', ['maybe'], 2, 'not a boolean'),
           ('--n-cond-frames', [-1], 2, 'n_cond_frames=-1'), ('--frame-width', [0], 2, 'frame_width=0'),
           ('--cond-dim', [-1], 2, 'cond_dim=-1'), ('--cond-dropout', [0.5], 2, 'needs cond_dim > 0'),
           ('--fast-attention', ['maybe'], 2, 'not a boolean'),
           ('--tasks', ['bogus', '--causal', 'false'], 2, 'unknown task'),
           ('--tasks', ['fp'], 2, 'need a masked prior'), ('--vqvae', [nowhere], 1, 'no checkpoint at'),
           ('--vqvae', [f['nc']], 1, "holds a 'gpt' model where a 'vqvae'"),
           ('--codes-file', [dud], 1, 'cannot write in'), ('--codes-file', [f['vq']], 1, 'is not a codes file'),
           ('--init-from', [nowhere], 1, 'no checkpoint at'),
           ('--init-from', [f['vq']], 1, "'vqvae' model where a 'gpt'")]
    fp, mk, ar = ['--gpt', f['mk'], '--task', 'fp'], ['--gpt', f['mk']], ['--gpt', f['ar']]
    sample = [('--gpt', [nowhere], 1, 'no checkpoint at'), ('--gpt', [f['vq']], 1, "holds a 'vqvae' model"),
              ('--vqvae', [nowhere], 1, 'no checkpoint at'), ('--vqvae', [f['nc']], 1, "holds a 'gpt' model"),
              ('--n', [0], 2, r'n=0: it must be at least 1'), ('--n', [10 ** 9], 2, r'and below \d+ \(--n\)'),
              ('--n', ['two'], 2, 'invalid int'), ('--n', [7, *fp, '--from', 'val'], 1, 'the val split holds 6 videos'),
              ('--out', ['x.jpg'], 2, 'write a .gif, .mp4 or .png'), ('--out', [nowhere + '.png'], 1, 'cannot write'),
              ('--task', ['bogus'], 2, 'invalid choice'), ('--task', ['opc'], 2, '--task and --from go together'),
              ('--task', ['opc', '--from', 'val', '--n', 2], 1, 'raster-order prefix'),
              ('--from', ['/no/such.mp4', *fp], 1, 'no such video file'), ('--from', ['vall', *fp], 1, 'vall: no such'),
              ('--from', [f['videos'], *fp], 1, 'no such video file'),
              ('--n-given', [2, *mk, '--task', 'opc', '--from', 'val'], 2, 'the latent frames --task fp gives'),
              ('--n-given', [2, *fp, '--from', 'val'], 2, 'leaves nothing to generate'),
              ('--n-given', [0, *fp, '--from', 'val'], 2, 'leaves nothing to condition on'),
              ('--steps', [5], 2, 'steps counts the passes'), ('--steps', [0, *mk], 2, 'steps must be a positive'),
              ('--steps', [10 ** 6, *mk], 2, 'at most the 32 tokens'), ('--frames', [5], 1, 'multiple of 2'),
              ('--frames', [2_000_000], 1, r'from 4 to \d+ \(4 GiB'), ('--guidance', [2], 2, 'cond_dropout=0.1'),
              ('--guidance', ['nan'], 2, 'needs a finite value'), ('--labels', ['x', *ar], 1, 'joined by commas'),
              ('--labels', [1, '1,2', *ar], 1, 'as many for every video'),
              ('--labels', [7, *ar], 1, r'class labels must be \(8,\) or \(8, k < 3\) in \[0, 3\)'),
              ('--labels', ['3,', *ar], 1, 'joined by commas'),
              ('--labels', [1], 1, 'no vector conditioning: drop --actions and --labels'),
              ('--frames-from', ['val'], 1, 'drop --frames-from: this prior takes no frames'),
              ('--actions', [f['objects.npy'], *ar], 1, 'not a .npy of numbers'),
              ('--actions', [nowhere], 1, 'no such file'), ('--top-p', [0], 2, r'top_p in \(0, 1\]'),
              ('--top-p', [0.9, *mk], 2, 'causal priors only'), ('--temperature', [-1], 2, 'temperature >= 0'),
              ('--temperature', ['nan'], 2, 'temperature >= 0'), ('--top-k', [0], 2, 'top_k >= 1'),
              ('--top-k', [1, *mk], 2, 'causal priors only'), ('--seed', [-1], 2, 'seed=-1'),
              ('--dataset', ['bogus'], 2, 'invalid choice'), ('--dataset', ['folder'], 1, 'pick the videos of --from'),
              ('--data-dir', [nowhere], 1, 'no such folder'), ('--data-dir', [f['videos']], 1, 'pick the videos'),
              ('--mnist-dir', [nowhere], 1, 'no such folder')]
    nc, grey = ['--gpt', f['nc'], '--context', 2, '--future', 2], ['--vqvae', f['vq64'], '--gpt', f['nc64']]
    eval_ = [('--vqvae', [nowhere], 1, 'no checkpoint at'), ('--vqvae', [f['nc']], 1, "holds a 'gpt' model"),
             ('--gpt', [nowhere], 1, 'no checkpoint at'), ('--gpt', [f['vq']], 1, "holds a 'vqvae' model"),
             ('--n', [0], 2, r'n=0: it must be at least 1'), ('--n', [10 ** 9], 2, r'and below \d+ \(--n\)'),
             ('--n', [7], 1, 'the held-out set holds 6 videos'), ('--context', [0], 2, 'context=0'),
             ('--context', [1, '--gpt', f['nc'], '--future', 2], 2, r'at least 2 context frames: one latent frame'),
             ('--future', [-1], 2, 'future=-1'),
             ('--future', [10 ** 9, *nc[:4]], 2, r'future=1000000000: .* below \d+'),
             ('--steps', [5, *nc], 2, 'steps counts the passes'), ('--steps', [5], 2, 'add --gpt'),
             ('--steps', [0, *nc, '--gpt', f['mk']], 2, 'steps must be a positive'),
             ('--batch-size', [0], 2, 'batch_size=0'), ('--test-seq', [f['seq.npy']], 2, 'add --gpt'),
             ('--test-seq', [f['seq.npy'], *nc], 2, "Moving MNIST's 64x64 grey videos"),
             ('--test-seq', [f['seq.npy'], *nc, '--gpt', f['ar']], 2, 'a prior with cond_dim=0'),
             ('--test-seq', [nowhere, *nc, *grey], 1, 'does not exist'),
             ('--test-seq', [f['seq.npy'], *nc, *grey, '--n', 3], 1, 'seq.npy holds 2 videos; pass --n 2'),
             ('--json', [f['out'] + '/e.txt'], 2, 'name a .json file'), ('--json', [f['vq']], 2, 'name a .json'),
             ('--json', [nowhere + '.json'], 1, 'cannot write in'),
             ('--json', [f['foreign.json']], 1, 'foreign.json exists and is not from an eval run'),
             ('--json', [f['orphan.json'], *nc], 1, 'orphan.gif exists and is not from an eval run'),
             ('--i3d', [nowhere], 1, 'no such file'), ('--i3d', [f['state_dict.pt'], '--n', 1], 2, 'FVD compares two'),
             ('--i3d', [f['state_dict.pt']], 1, 'not a TorchScript network'),
             ('--temperature', [-1], 2, 'temperature >= 0'), ('--temperature', ['nan', *nc], 2, 'temperature >= 0'),
             ('--temperature', [0.5], 2, 'needs a prior: add --gpt'), ('--future', [3], 2, 'needs a prior'),
             ('--top-k', [0], 2, 'top_k >= 1'), ('--top-k', [5], 2, 'add --gpt'),
             ('--top-k', [1, *nc, '--gpt', f['mk']], 2, 'causal priors only'), ('--seed', [-1], 2, 'seed=-1'),
             ('--seed', ['x'], 2, 'invalid int'), ('--dataset', ['bogus'], 2, 'invalid choice'),
             ('--dataset', ['bair'], 1, 'no bair_done.json'), ('--data-dir', [nowhere], 1, 'no such folder'),
             ('--mnist-dir', [nowhere], 1, 'no such folder')]
    demo = [('--out-dir', [dud], 1, 'cannot write in'), ('--mnist-dir', [nowhere], 1, 'no such folder'),
            ('--vqvae-steps', [0], 2, 'vqvae_steps=0'), ('--gpt-steps', [0], 2, 'gpt_steps=0'),
            ('--vqvae-lr', [0], 2, 'vqvae_lr=0'), ('--vqvae-lr', ['nan'], 2, 'vqvae_lr=nan')]
    return ([('train-vqvae', *row) for row in train + vqvae] + [('train-gpt', *row) for row in train + gpt] +
            [('sample', *row) for row in sample] + [('eval', *row) for row in eval_] + [('demo', *row) for row in demo])


def _main_exit(argv, capsys):
    """(exit code, the one message line, stderr) of vg.main(argv), run in this process."""
    with pytest.raises(SystemExit) as e:
        vg.main(list(map(str, argv)))
    err, code = capsys.readouterr().err, e.value.code
    return (code, err.strip().splitlines()[-1], err) if isinstance(code, int) else (1, code, err)


def test_every_flag_of_every_command_has_bad_values_in_the_table(cli):
    sub = next(a for a in vg.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = {(cmd, a.option_strings[-1]) for cmd, p in sub.choices.items() for a in p._actions
             if a.option_strings and a.dest != 'help'}
    assert flags == {(cmd, flag) for cmd, flag, *_ in _cli_table(cli)}  # a new flag needs its bad values here


@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # torch.jit.load, for --i3d
def test_every_bad_value_is_a_one_line_error_before_any_work(cli, at_work, capsys):
    bases = _cli_bases(cli)
    for argv in bases.values():  # the base commands are valid: they reach the work, where at_work stops them
        with pytest.raises(_Reached):
            vg.main(list(map(str, argv)))
    for cmd, flag, args, want, pattern in _cli_table(cli):
        code, message, err = _main_exit([*bases[cmd], flag, *args], capsys)
        case = f"{cmd} {flag} {args}: exit {code}, {err!r}"
        assert code == want and 'Traceback' not in err and '\n' not in message, case
        assert re.search(pattern, message) and (code == 1 or ': error: ' in message), case  # argparse's last line


def test_eval_writes_only_its_own_json_and_a_gif_beside_it(cli, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(data, 'CACHE_DIR', tmp_path)
    run = ['eval', '--vqvae', cli['vq'], '--gpt', cli['nc'], '--context', 2, '--future', 2, '--n', 2, '--top-k', 1]
    vg.main(list(map(str, run + ['--json', tmp_path / 'e.json'])))
    scores = json.loads((tmp_path / 'e.json').read_text())
    assert scores[data.EVAL_MARK] and scores['videos'] == 2 and iio.imread(tmp_path / 'e.gif').shape[0] == 4
    vg.main(list(map(str, run + ['--json', tmp_path / 'e.json'])))  # its own files: written again
    (tmp_path / 'e.json').unlink()
    code, message, _ = _main_exit(run + ['--json', tmp_path / 'e.json'], capsys)  # a .gif no JSON of eval's is beside
    assert code == 1 and 'e.gif exists and is not from an eval run' in message
    shutil.copy(cli['vq'], tmp_path / 'copy.json')  # a checkpoint under a .json name
    before = (tmp_path / 'copy.json').read_bytes()
    code, message, _ = _main_exit(run + ['--json', tmp_path / 'copy.json'], capsys)
    assert code == 1 and 'copy.json exists and is not from an eval run' in message
    assert (tmp_path / 'copy.json').read_bytes() == before and not (tmp_path / 'copy.gif').exists()


def test_bench_checks_the_original_code_and_the_workloads_before_running_any(tmp_path):
    (tmp_path / 'videogpt').mkdir()
    for name in ('__init__.py', 'gpt.py', 'vqvae.py'):  # the files are there, the classes are not
        (tmp_path / 'videogpt' / name).write_text('')
    bench = [sys.executable, os.path.join(HERE, 'benchmarks', 'bench.py')]
    r = subprocess.run(bench + ['--original', str(tmp_path), '--workloads', 'sample', '--steps', '1'],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and 'is not the original code (AttributeError' in r.stderr and 'Traceback' not in r.stderr
    assert r.stdout == ''  # none of our workloads ran first
    for workloads in ('bogus', 'prior@many', 'orig-vqvae'):
        r = subprocess.run(bench + ['--workloads', workloads], capture_output=True, text=True, timeout=600)
        assert r.returncode == 2 and 'choose from vqvae, prior, prior-bair, sample' in r.stderr, r.stderr


def test_presets_build_with_their_paper_shapes():
    shapes = {'mnist': (4, 16, 16), 'bair-8x32x32': (8, 32, 32), 'bair-4x32x32': (4, 32, 32),
              'ucf101': (4, 32, 32)}
    for name, shape in shapes.items():
        vcfg, gcfg = vg.preset_configs(name)
        assert vcfg.latent_shape == shape and gcfg.latent_shape == shape and gcfg.n_codes == vcfg.n_codes
    assert vg.preset_configs('ucf101')[0].resolution == 128


def test_readme_example_runs():
    text = open(os.path.join(HERE, 'README.md')).read()
    code = re.search(r'<!-- example -->\s*```python\n(.*?)```', text, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    exec(compile(code, 'README.md', 'exec'), {})


def test_readme_preset_table_matches_the_code():
    text = open(os.path.join(HERE, 'README.md')).read()
    rows = re.findall(r'^\| `([\w-]+)` \| \S+ \| \(([\d, ]+)\) \| ([\d.]+)M \| ([\d.]+)M \|$', text, re.M)
    assert {r[0] for r in rows} == set(vg.PRESETS)
    for name, shape, vq_m, gpt_m in rows:
        vcfg, gcfg = vg.preset_configs(name)
        assert str(vcfg.latent_shape) == f'({shape})'
        assert f'{sum(p.numel() for p in vg.VQVAE(vcfg).parameters()) / 1e6:.1f}' == vq_m, name
        assert f'{sum(p.numel() for p in vg.VideoGPT(gcfg).parameters()) / 1e6:.1f}' == gpt_m, name


NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(HERE, 'notebooks')) if f.endswith('.ipynb')) \
    if os.path.isdir(os.path.join(HERE, 'notebooks')) else []


@pytest.mark.slow
@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs_top_to_bottom_in_fast_mode(name, monkeypatch, tmp_path):
    import nbclient
    import nbformat
    monkeypatch.setenv('VIDEOGPT_FAST', '1')  # the kernel inherits this process's environment
    monkeypatch.setenv('VIDEOGPT_RUNS', str(tmp_path))  # a fresh folder: reruns resume, and this one must train
    monkeypatch.setenv('MPLBACKEND', 'Agg')
    path = os.path.join(HERE, 'notebooks', name)
    assert os.path.getsize(path) < 3e6
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                            resources={'metadata': {'path': os.path.dirname(path)}}).execute()  # raises on error
    assert any(o.get('output_type') == 'display_data' for c in nb.cells for o in c.get('outputs', [])), \
        "the notebook showed no picture"



def _execute_notebook(name, env, monkeypatch, sizes_patch=''):
    """Run notebooks/name top to bottom in a kernel with env set; sizes_patch is appended to its sizes cell (the
    one that reads VIDEOGPT_CAP) as a learner would add a line there. Returns the executed notebook."""
    import nbclient
    import nbformat
    for key in ('VIDEOGPT_FAST', 'VIDEOGPT_MODE', 'VIDEOGPT_CAP', 'VIDEOGPT_RUNS'):
        monkeypatch.delenv(key, raising=False)
    # One thread: beside another job on 2 cores, a kernel's two threads ran its sampling loops many times slower.
    for key, value in dict(env, MPLBACKEND='Agg', OMP_NUM_THREADS='1').items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    path = os.path.join(HERE, 'notebooks', name)
    nb = nbformat.read(path, as_version=4)
    if sizes_patch:
        sizes = [c for c in nb.cells if c.cell_type == 'code' and 'VIDEOGPT_CAP' in c.source]
        assert len(sizes) == 1, 'one sizes cell reads VIDEOGPT_CAP'
        sizes[0].source += '\n' + sizes_patch
    nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                            resources={'metadata': {'path': os.path.dirname(path)}}).execute()  # raises on error
    return nb


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['cpu', 'gpu'])
@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_every_mode_runs_with_counts_capped(name, mode, monkeypatch, tmp_path):
    """Each mode's own sizes and branches (gpu's included, here on the CPU) run top to bottom, with every step count,
    batch and clip count capped at 2; a rerun resumes the finished runs from their checkpoints instead of training."""
    env = dict(VIDEOGPT_MODE=mode, VIDEOGPT_CAP='2', VIDEOGPT_RUNS=str(tmp_path))
    nb = _execute_notebook(name, env, monkeypatch)
    text = json.dumps([c.get('outputs', []) for c in nb.cells])
    assert f'mode {mode} on cpu' in text and 'resumed' not in text
    runs = [d for d in (tmp_path / os.listdir(tmp_path)[0]).iterdir() if (d / 'ckpt.pt').exists()]
    assert len(runs) >= 2  # the VQ-VAE and at least one prior, each in a folder named after its sizes
    if mode == 'gpu' and name.startswith('03'):  # one notebook rerun in the same folder: nothing trains again
        nb = _execute_notebook(name, env, monkeypatch)
        assert json.dumps([c.get('outputs', []) for c in nb.cells]).count('resumed') == len(runs)


def _exercises(name):
    """The changes the notebook's exercises ask for: the python blocks of its markdown cells after '## ... Exercises'."""
    cells = json.load(open(os.path.join(HERE, 'notebooks', name)))['cells']
    start = next(i for i, c in enumerate(cells) if c['cell_type'] == 'markdown'
                 and re.match(r'## (\d+\. )?Exercises', ''.join(c['source'])))
    text = '\n'.join(''.join(c['source']) for c in cells[start:] if c['cell_type'] == 'markdown')
    return re.findall(r'```python\n(.*?)\n```', text, re.S)


@pytest.mark.skipif(not NOTEBOOKS, reason='no notebooks')
def test_notebooks_end_with_numbered_exercises_and_answers():
    for name in NOTEBOOKS:
        cells = json.load(open(os.path.join(HERE, 'notebooks', name)))['cells']
        text = [''.join(c['source']) for c in cells]
        numbers = [int(m) for t in text for m in re.findall(r'^\*\*Exercise (\d+)\.', t, re.M)]
        assert 3 <= len(numbers) <= 5 and numbers == list(range(1, len(numbers) + 1)), name
        assert len(_exercises(name)) == len(numbers), name  # each says its change as a python block
        assert sum('<details><summary>Answer</summary>' in t for t in text) == len(numbers), name


# Exercises run in two groups per notebook, each group's changes added to the sizes cell together, so that every
# change runs as written at the cost of two capped fast runs. Changes that cannot go together (no actions, and
# guidance on the actions) sit in different groups.
EXERCISE_GROUPS = {'01': [(1, 3, 5), (2, 4)], '02': [(1, 4), (2, 3)], '03': [(1, 3), (2, 4)]}


@pytest.mark.slow
@pytest.mark.parametrize('group', [0, 1])
@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_exercises_run_as_written(name, group, monkeypatch, tmp_path):
    exercises, groups = _exercises(name), EXERCISE_GROUPS[name[:2]]
    assert sorted(sum(groups, ())) == list(range(1, len(exercises) + 1)), 'every exercise in one group'
    changes = [exercises[k - 1] for k in groups[group]]
    env = dict(VIDEOGPT_FAST='1', VIDEOGPT_CAP='2', VIDEOGPT_RUNS=str(tmp_path))
    nb = _execute_notebook(name, env, monkeypatch, '\n'.join(changes))
    assert any(o.get('output_type') == 'display_data' for c in nb.cells for o in c.get('outputs', []))


def _setup_cell(name):
    cells = json.load(open(os.path.join(HERE, 'notebooks', name)))['cells']
    return next(''.join(c['source']) for c in cells if 'VIDEOGPT_REPO_URL' in ''.join(c['source'])
                and c['cell_type'] == 'code')


def _run_setup_cell(cwd, repo_url):
    """The notebooks' setup cell in a fresh Python, as a kernel started in cwd would run it; prints ROOT and cwd."""
    code = _setup_cell(NOTEBOOKS[0]) + "\nprint('ROOT=' + str(ROOT)); print('CWD=' + os.getcwd())"
    env = {k: v for k, v in os.environ.items() if k != 'VIDEOGPT_REPO_URL'}
    return subprocess.run([sys.executable, '-c', code], cwd=cwd, env=dict(env, VIDEOGPT_REPO_URL=repo_url),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not NOTEBOOKS, reason='no notebooks')
def test_notebook_setup_cell_works_every_way_in_or_names_the_fix(tmp_path):
    assert len({_setup_cell(name) for name in NOTEBOOKS}) == 1  # one setup cell, the same in every notebook
    # Colab from a GitHub copy: a fresh folder, no project files; a file:// clone of this checkout stands in for it.
    if subprocess.run(['git', '-C', HERE, 'rev-parse', 'HEAD'], capture_output=True).returncode == 0:
        fresh = tmp_path / 'content'
        fresh.mkdir()
        r = _run_setup_cell(fresh, f'file://{HERE}')
        assert r.returncode == 0, r.stderr
        assert f"ROOT={fresh / 'videogpt'}\nCWD={fresh / 'videogpt' / 'notebooks'}" in r.stdout
    # The files uploaded next to the notebook (Colab's Files panel), with no address set.
    uploaded = tmp_path / 'uploaded'
    uploaded.mkdir()
    for f in ('videogpt.py', 'data.py'):
        shutil.copy(os.path.join(HERE, f), uploaded / f)
    r = _run_setup_cell(uploaded, '')
    assert r.returncode == 0 and f'ROOT={uploaded}\nCWD={uploaded}' in r.stdout, r.stderr
    # Locally, from notebooks/: the project one folder up.
    r = _run_setup_cell(os.path.join(HERE, 'notebooks'), '')
    assert r.returncode == 0 and f"ROOT={HERE}\nCWD={os.path.join(HERE, 'notebooks')}" in r.stdout, r.stderr
    # None of these: one sentence that names both fixes, no traceback, nothing cloned.
    empty = tmp_path / 'empty'
    empty.mkdir()
    r = _run_setup_cell(empty, '')
    assert r.returncode == 1 and 'Traceback' not in r.stderr and not os.listdir(empty)
    assert 'upload videogpt.py and data.py' in r.stderr and 'VIDEOGPT_REPO_URL' in r.stderr


def test_no_invented_repository_address():
    """No badge or clone points to an address the project does not have: the learner's copy is set in the cell."""
    texts = [open(os.path.join(HERE, 'README.md')).read()] + \
        [open(os.path.join(HERE, 'notebooks', name)).read() for name in NOTEBOOKS]
    for text in texts:
        assert 'videogpt-reference' not in text and 'colab.research.google.com/github/' not in text



LEAKS = {  # what a reader of the published files can neither follow nor use
    'a local absolute path': r'(?<![\w.~])/(?:work|root|home|tmp|mnt|Users)/',
    'the development tree': r'\.\./shared',
    'a private tracker number': r'(?i)\bissues? #?\d+',
    'private-development wording': r'(?i)(?<!colab )(?<!runtime )\bsessions?\b|\bsub-?agents?\b|\bhelper agents?\b'
                                   r'|\bCEO\b|\bClaude\b',
}


def _published_texts():
    """(name, text) of the README, RESULTS.md, the benchmark scripts, and each notebook's sources and saved outputs
    (pictures left out: base64 can spell anything)."""
    texts = [(f, open(os.path.join(HERE, f)).read()) for f in ['README.md'] + sorted(
        os.path.join('benchmarks', b) for b in os.listdir(os.path.join(HERE, 'benchmarks')))
        if os.path.isfile(os.path.join(HERE, f))]
    for name in NOTEBOOKS:
        for i, cell in enumerate(json.load(open(os.path.join(HERE, 'notebooks', name)))['cells']):
            outputs = [{k: v for k, v in o.get('data', {}).items() if not k.startswith('image/')} | {
                k: o[k] for k in ('text', 'ename', 'evalue', 'traceback') if k in o} for o in cell.get('outputs', [])]
            texts.append((f'{name} cell {i}', ''.join(cell['source']) + json.dumps(outputs, ensure_ascii=False)))
    return texts


def test_published_files_hold_no_local_path_or_private_reference():
    found = [f'{where}: {what} ({m.group(0)!r})' for where, text in _published_texts()
             for what, pattern in LEAKS.items() for m in [re.search(pattern, text)] if m]
    assert not found, '\n'.join(found)
    assert re.search(LEAKS['a local absolute path'], 'saved in /tmp/run') and not re.search(
        LEAKS['a local absolute path'], '~/.cache/videogpt, runs/notebooks and /content/drive')  # the patterns bite


def test_notebook_01_uses_the_leaderboard_mse():
    """One MSE in notebook 01, the Moving MNIST leaderboard's (summed over a frame's pixels), explained once."""
    cells = json.load(open(os.path.join(HERE, 'notebooks', '01_moving_mnist.ipynb')))['cells']
    code = '\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'code')
    prose = '\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'markdown')
    assert 'F.mse_loss' not in code and '.pow(2).mean(' not in code  # no per-pixel MSE printed as "MSE"
    assert prose.count("MSE is the Moving MNIST leaderboard's") == 1


def test_notebook_03_imports_what_it_uses():
    """Notebook 03 runs without the names its setup cell happens to import (os, sys): its own import cell has them."""
    cells = [''.join(c['source']) for c in json.load(open(os.path.join(
        HERE, 'notebooks', '03_masked_generation.ipynb')))['cells'] if c['cell_type'] == 'code']
    imports = next(c for c in cells if 'import dataclasses' in c)
    assert re.search(r'import .*\bos\b', imports) and re.search(r'import .*\bsys\b', imports)


# ------------------------------------------------------------------------------------------------------------------
# data.py: loaders tested on small files written in the real formats
# ------------------------------------------------------------------------------------------------------------------
# Helpers (prefixed _data_ so that this file can be merged into test_videogpt.py)


def _data_write_idx(path, array, magic):
    """Write array (uint8) as an IDX .gz file: big-endian magic, one uint32 per dim, then the bytes."""
    header = struct.pack(f'>I{array.ndim}I', magic, *array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _data_fake_mnist(folder, n=6, split='train'):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    _data_write_idx(folder / data.MNIST_FILES[split][0], images, 2051)
    _data_write_idx(folder / data.MNIST_FILES[split][1], labels, 2049)
    return images, labels


class _DataQuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _data_serve(directory):
    """An HTTP server on 127.0.0.1 for a directory; the caller calls .shutdown()."""
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                             functools.partial(_DataQuietHandler, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _data_write_bair_tar(tmp_path, layout=None, seed=0):
    """A tar in the exact BAIR layout (ignored keys included); returns (tar path, {member: [(frames, actions)]})."""
    from tfrecord.writer import TFRecordWriter
    layout = layout or {'train': [2, 3, 1], 'test': [2]}
    rng, written = np.random.default_rng(seed), {}
    for split, counts in layout.items():
        for j, n in enumerate(counts):
            name = f'softmotion30_44k/{split}/traj_{256 * j}_to_{256 * j + 255}.tfrecords'
            path = tmp_path / 'src' / name
            path.parent.mkdir(parents=True, exist_ok=True)
            writer, written[name] = TFRecordWriter(str(path)), []
            for _ in range(n):
                frames = rng.integers(0, 256, (30, 64, 64, 3), dtype=np.uint8)
                actions = rng.standard_normal((30, 4)).astype(np.float32)
                datum = {}
                for i in range(30):
                    datum[f'{i}/image_aux1/encoded'] = (frames[i].tobytes(), 'byte')
                    datum[f'{i}/image_main/encoded'] = (rng.bytes(64 * 64 * 3), 'byte')
                    datum[f'{i}/action'] = (actions[i].tolist(), 'float')
                    datum[f'{i}/endeffector_pos'] = (rng.standard_normal(3).tolist(), 'float')
                writer.write(datum)
                written[name].append((frames, actions))
            writer.close()
    tar_path = tmp_path / 'bair_robot_pushing_dataset_v0.tar'
    with tarfile.open(tar_path, 'w') as tar:
        for name in sorted(written, reverse=True):  # archive order unlike sorted order, on purpose
            tar.add(tmp_path / 'src' / name, arcname=name)
    return tar_path, written


def _data_write_video(path, frames, fps=10):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == '.gif':
        iio.imwrite(path, frames, duration=1000 / fps, loop=0)
    else:
        iio.imwrite(path, frames, fps=fps)


# ------------------------------------------------------------------------------------------------------------------
# Moving MNIST


def test_data_to_video_range():
    frames = np.array([0, 255], np.uint8).reshape(2, 1, 1, 1).repeat(3, 3)  # (T, H, W, C)
    video = data.to_video(frames)
    assert video.shape == (3, 2, 1, 1) and video.dtype == torch.float32
    assert video.min() == -0.5 and video.max() == 0.5


def test_data_moving_mnist_shapes_range_determinism():
    digits = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    ds = data.MovingMNIST(digits, n_frames=12, n_digits=3, length=50, seed=1)
    x = ds[5]['video']
    assert x.shape == (1, 12, 64, 64) and x.dtype == torch.float32
    assert -0.5 <= x.min() and x.max() <= 0.5 and x.max() > 0
    assert torch.equal(x, data.MovingMNIST(digits, n_frames=12, n_digits=3, length=50, seed=1)[5]['video'])
    assert not torch.equal(x, data.MovingMNIST(digits, n_frames=12, n_digits=3, length=50, seed=2)[5]['video'])
    assert not torch.equal(x, ds[6]['video'])
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch['video'].shape == (4, 1, 12, 64, 64)


def test_data_held_out_moving_mnist_never_shows_a_training_digit(tmp_path):
    images, labels = data.render_font_digits(60)
    _data_write_idx(tmp_path / 'train-images-idx3-ubyte.gz', images, 2051)
    _data_write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', labels.astype('uint8'), 2049)
    tc = vg.TrainConfig(mnist_dir=str(tmp_path), n_digits=1)
    train, held = data.make_dataset(tc, 4, 64), data.make_dataset(tc, 4, 64, train=False)
    assert len(train.digits) == 54 and np.array_equal(held.digits, images[54:])  # the last 10%, never trained on
    assert np.array_equal(train.digits, images[:54])
    # with MNIST's test split in the folder, held-out videos come from it
    test_images = 255 - images[:7]
    _data_write_idx(tmp_path / 't10k-images-idx3-ubyte.gz', test_images, 2051)
    _data_write_idx(tmp_path / 't10k-labels-idx1-ubyte.gz', labels[:7].astype('uint8'), 2049)
    assert np.array_equal(data.make_dataset(tc, 4, 64, train=False).digits, test_images)


def test_data_moving_mnist_training_draws_fresh_videos_unless_sized(tmp_path):
    _data_fake_mnist(tmp_path, n=20)
    tc = vg.TrainConfig(mnist_dir=str(tmp_path), n_digits=2)
    train, held = data.make_dataset(tc, 4, 64), data.make_dataset(tc, 4, 64, train=False)
    assert len(train) == data.FRESH and len(held) == 10_000  # held-out sets stay fixed, for comparable scores
    far = train[data.FRESH - 1]['video']  # any index is a valid, distinct video
    assert far.shape == (1, 4, 64, 64) and not torch.equal(far, train[0]['video'])
    assert len(data.make_dataset(vg.TrainConfig(mnist_dir=str(tmp_path), dataset_size=500), 4, 64)) == 500
    gcfg = vg.GPTConfig(n_codes=32, latent_shape=(2, 16, 16))
    vq_path = tmp_path / 'vq.pt'
    vg.save_checkpoint(vq_path, kind='vqvae', config=vg.asdict(vg.VQVAEConfig(
        sequence_length=4, downsample=(2, 4, 4), n_hiddens=16, n_codes=32)), model=vg.VQVAE(vg.VQVAEConfig(
            sequence_length=4, downsample=(2, 4, 4), n_hiddens=16, n_codes=32)).state_dict())
    _raises(ValueError, '--dataset-size N', lambda: vg.train_gpt(gcfg, vg.TrainConfig(
        out_dir=str(tmp_path / 'g'), mnist_dir=str(tmp_path), vqvae=str(vq_path), codes_file=str(tmp_path / 'c.pt'))))


def test_data_moving_mnist_labels_name_the_digit_shown():
    digits = np.stack([np.full((28, 28), 20 * (i + 1), np.uint8) for i in range(5)])  # digit i has intensity 20(i+1)
    labels = np.array([7, 3, 9, 0, 3])
    ds = data.MovingMNIST(digits, n_frames=4, n_digits=1, length=30, labels=labels)
    for item in (ds[i] for i in range(30)):
        shown = round((item['video'].max().item() + 0.5) * 255 / 20) - 1  # which digit is in the video
        assert item['label'].dtype == torch.int64 and item['label'].item() == labels[shown]
    assert 'label' not in data.MovingMNIST(digits, n_frames=4, n_digits=1)[0]
    two = data.MovingMNIST(digits, n_frames=4, n_digits=2, labels=labels)  # two digits: both classes, in order shown
    assert two[0]['label'].tolist() == two.classes(0).tolist() == [labels[i] for i in two.trajectory(0)[0]]
    with pytest.raises(ValueError, match='one label per digit'):
        data.MovingMNIST(digits, n_frames=4, n_digits=2, labels=labels[:3])
    with pytest.raises(ValueError, match='Moving MNIST with labels'):  # a class-conditional prior, unlabelled videos
        vg.gpt_inputs(vg.GPTConfig(cond_dim=10), {'video': torch.zeros(2, 1, 4, 64, 64)})
    null, unlabelled = vg.GPTConfig(cond_dim=10, cond_dropout=0.1), {'video': torch.zeros(2, 1, 4, 64, 64)}
    assert vg.gpt_inputs(null, unlabelled, null=True) == (None, None)  # sampling: the null condition it trained with
    with pytest.raises(ValueError, match='Moving MNIST with labels'):  # training: never the null condition alone
        vg.gpt_inputs(null, unlabelled)


def test_data_moving_mnist_bounces_and_stays_in_bounds():
    ds = data.MovingMNIST(np.zeros((3, 28, 28), np.uint8), n_frames=100, n_digits=2)
    reversals, norms = 0, []
    for idx in range(20):
        _, corners = ds.trajectory(idx)  # (T, n_digits, 2)
        assert corners.min() >= 0 and corners.max() <= 64 - 28
        steps = np.diff(corners, axis=0)
        norms.append(np.linalg.norm(steps, axis=-1))
        reversals += (steps[1:] * steps[:-1] < 0).sum()  # a coordinate that moved one way, then the other
    # Rounding adds at most ~1 px to the 3.6 px step; clamping at a wall only shortens the odd step.
    assert np.max(norms) <= 3.6 + 1.5 and abs(np.mean(norms) - 3.6) < 0.3
    assert reversals > 20 * 2 * 5  # 100 frames cross the 36 px range ~10 times: digits bounce, never stick


def test_data_moving_mnist_combines_digits_with_max():
    digits = np.stack([np.full((28, 28), 100, np.uint8), np.full((28, 28), 200, np.uint8)])
    ds = data.MovingMNIST(digits, n_frames=10, n_digits=2)
    overlaps = 0
    for idx in range(30):
        ids, corners = ds.trajectory(idx)
        expected = np.zeros((10, 64, 64), np.uint8)
        count = np.zeros((10, 64, 64), int)
        for t in range(10):
            for d, (y, x) in zip(ids, corners[t]):
                expected[t, y:y + 28, x:x + 28] = np.maximum(expected[t, y:y + 28, x:x + 28], digits[d])
                count[t, y:y + 28, x:x + 28] += 1
        got = np.rint((ds[idx]['video'][0].numpy() + 0.5) * 255).astype(np.uint8)
        np.testing.assert_array_equal(got, expected)
        overlaps += (count == 2).sum()
    assert overlaps > 0  # the comparison above covered overlapping digits


# ------------------------------------------------------------------------------------------------------------------
# MNIST files, downloads and the fallback


def test_data_idx_reader_and_errors(tmp_path):
    images, labels = _data_fake_mnist(tmp_path / 'mnist')
    got_images, got_labels, source = data.load_mnist(tmp_path / 'mnist', download=False, fallback=False)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_labels.dtype == np.int64 and 'MNIST train' in source and 'NOT' not in source
    # Header says 6 images, body holds 5: truncated.
    bad = tmp_path / 'short.gz'
    with gzip.open(bad, 'wb') as f:
        f.write(struct.pack('>4I', 2051, 6, 28, 28) + images[:5].tobytes())
    with pytest.raises(ValueError, match='short.gz.*truncated'):
        data.read_idx(bad, 2051)
    cut = tmp_path / 'cut.gz'  # a .gz cut in the middle of its stream
    cut.write_bytes((tmp_path / 'mnist' / 'train-images-idx3-ubyte.gz').read_bytes()[:500])
    with pytest.raises(ValueError, match='cut.gz'):
        data.read_idx(cut, 2051)
    with pytest.raises(ValueError, match='train-labels.*magic number 2051'):
        data.read_idx(tmp_path / 'mnist' / 'train-labels-idx1-ubyte.gz', 2051)
    with pytest.raises(FileNotFoundError, match='t10k-images'):
        data.load_mnist(tmp_path / 'mnist', split='test')


def test_data_mnist_download_md5_and_cache(tmp_path, monkeypatch):
    images, _ = _data_fake_mnist(tmp_path / 'mirror')
    for name in data.MNIST_FILES['train']:
        monkeypatch.setitem(data.MNIST_MD5, name, hashlib.md5((tmp_path / 'mirror' / name).read_bytes()).hexdigest())
    server = _data_serve(tmp_path / 'mirror')
    try:
        dead = 'http://127.0.0.1:9/'  # the first mirror is down: the second one serves
        monkeypatch.setattr(data, 'MNIST_MIRRORS', [dead, f'http://127.0.0.1:{server.server_port}/'])
        got, _, source = data.load_mnist(cache_dir=tmp_path / 'cache', fallback=False)
        np.testing.assert_array_equal(got, images)
        assert str(tmp_path / 'cache') in source
        monkeypatch.setattr(data, 'MNIST_MIRRORS', [dead])  # now cached: no network needed
        assert data.load_mnist(cache_dir=tmp_path / 'cache', fallback=False)[2] == source
        monkeypatch.setitem(data.MNIST_MD5, 'train-images-idx3-ubyte.gz', '0' * 32)  # a corrupt mirror
        monkeypatch.setattr(data, 'MNIST_MIRRORS', [f'http://127.0.0.1:{server.server_port}/'])
        with pytest.raises(RuntimeError, match='md5'):
            data.load_mnist(cache_dir=tmp_path / 'cache2', fallback=False)
        assert not list((tmp_path / 'cache2').glob('train-images*'))  # nothing bad left behind
    finally:
        server.shutdown()
        server.server_close()


def test_data_mnist_offline_fallback_is_named_honestly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, 'MNIST_MIRRORS', ['http://127.0.0.1:9/'])  # a closed port: fails at once
    start = time.time()
    with pytest.raises(RuntimeError, match='mnist_dir'):
        data.load_mnist(cache_dir=tmp_path, fallback=False)
    assert time.time() - start < data.DOWNLOAD_TIMEOUT
    images, labels, source = data.load_mnist(cache_dir=tmp_path, fallback=True)
    assert source == data.FALLBACK_SOURCE and 'NOT MNIST' in source
    assert 'NOT MNIST' in capsys.readouterr().out
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert set(labels.tolist()) == set(range(10)) and labels.dtype == np.int64
    # Digits carry ink, centred like MNIST's 20x20 box in 28x28, and jitter makes copies differ.
    assert images[:100].max() == 255 and images[:, :2].max() < 128 and images[:, :, :2].max() < 128
    same = images[labels == 3]
    assert not np.array_equal(same[0], same[1])


def test_data_moving_mnist_test_file(tmp_path, monkeypatch):
    seq = np.random.default_rng(0).integers(0, 256, (20, 7, 64, 64), dtype=np.uint8)  # time first, like the file
    path = tmp_path / 'mnist_test_seq.npy'
    np.save(path, seq)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    ds = data.load_moving_mnist_test(tmp_path, md5=md5)  # a folder holding the file works too
    assert len(ds) == 7
    item = ds[3]
    assert item['video'].shape == (1, 20, 64, 64)
    torch.testing.assert_close(item['video'][0], torch.from_numpy(seq[:, 3]).float() / 255 - 0.5)
    assert torch.equal(item['context'], item['video'][:, :10]) and torch.equal(item['target'], item['video'][:, 10:])
    assert next(iter(DataLoader(ds, batch_size=4)))['target'].shape == (4, 1, 10, 64, 64)
    with pytest.raises(ValueError, match='md5'):
        data.load_moving_mnist_test(path)  # the official md5 does not match a home-made file
    assert len(data.load_moving_mnist_test(path, md5=None)) == 7
    np.save(tmp_path / 'wrong.npy', seq.transpose(1, 0, 2, 3)[:, :, :32])
    with pytest.raises(ValueError, match='wrong.npy.*time first'):
        data.load_moving_mnist_test(tmp_path / 'wrong.npy', md5=None)
    with pytest.raises(FileNotFoundError, match='missing.npy'):
        data.load_moving_mnist_test(tmp_path / 'missing.npy')
    monkeypatch.setattr(data, 'MMNIST_TEST_URL', 'http://127.0.0.1:9/mnist_test_seq.npy')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(RuntimeError, match='could not download.*by hand'):
        data.load_moving_mnist_test(tmp_path / 'empty', download=True)
    assert not list((tmp_path / 'empty').iterdir())  # no .part file left


# ------------------------------------------------------------------------------------------------------------------
# BAIR


def test_data_bair_round_trip_is_exact(tmp_path):
    tar_path, written = _data_write_bair_tar(tmp_path)
    marker = data.convert_bair(tar_path, tmp_path / 'bair')
    names = sorted(written)
    train = [n for n in names if '/train/' in n]
    expected = {'train': train[:-1], 'val': train[-1:], 'test': [n for n in names if '/test/' in n]}
    for split, files in expected.items():
        assert marker['splits'][split]['files'] == files
        frames = np.load(tmp_path / 'bair' / f'{split}_frames.npy')
        actions = np.load(tmp_path / 'bair' / f'{split}_actions.npy')
        records = [r for f in files for r in written[f]]
        assert frames.shape == (len(records), 30, 64, 64, 3) and frames.dtype == np.uint8
        assert actions.shape == (len(records), 30, 4) and actions.dtype == np.float32
        for i, (f, a) in enumerate(records):
            assert frames[i].tobytes() == f.tobytes() and actions[i].tobytes() == a.tobytes()
    assert (tmp_path / 'bair' / data.BAIR_MARKER).exists() and not list((tmp_path / 'bair').glob('*.partial'))


def test_data_bair_windows(tmp_path):
    tar_path, written = _data_write_bair_tar(tmp_path, {'train': [3, 1], 'test': [1]})
    data.convert_bair(tar_path, tmp_path / 'bair')
    frames = np.load(tmp_path / 'bair' / 'train_frames.npy')
    actions = np.load(tmp_path / 'bair' / 'train_actions.npy')
    ds = data.BAIR(tmp_path / 'bair', 'train', n_frames=16, train=True)
    torch.manual_seed(0)
    assert {ds.window_start(0) for _ in range(2000)} == set(range(15))  # 0..14, the last start included
    for idx in range(len(ds)):
        item = ds[idx]
        assert item['video'].shape == (3, 16, 64, 64) and item['actions'].shape == (16, 4)
        # The video is some window of the sequence, and the actions belong to that same window.
        starts = [s for s in range(15) if torch.equal(item['video'], data.to_video(frames[idx, s:s + 16]))]
        assert len(starts) == 1 and torch.equal(item['actions'], torch.from_numpy(actions[idx, starts[0]:][:16]))
    full = data.BAIR(tmp_path / 'bair', 'train', n_frames=30, train=True)
    assert {full.window_start(0) for _ in range(50)} == {0}
    ev = data.BAIR(tmp_path / 'bair', 'val', n_frames=16, train=False)
    val_frames = np.load(tmp_path / 'bair' / 'val_frames.npy')
    assert not data.random_windows(ev) and data.random_windows(ds)  # evaluation windows ignore the RNG; training's don't
    assert torch.equal(ev[0]['video'], data.to_video(val_frames[0, :16]))  # evaluation: the first frames
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch['video'].shape == (2, 3, 16, 64, 64) and batch['actions'].shape == (2, 16, 4)
    assert len(pickle.dumps(ds)) < 10_000  # workers get the paths, not a copy of the memory-mapped arrays


def test_data_bair_truncated_or_corrupt_input_names_the_file(tmp_path):
    tar_path, _ = _data_write_bair_tar(tmp_path, {'train': [1, 1], 'test': [1]})
    victim = tmp_path / 'src' / 'softmotion30_44k/train/traj_256_to_511.tfrecords'
    raw = victim.read_bytes()
    victim.write_bytes(raw[:-100])  # a record cut short
    with tarfile.open(tmp_path / 'cut.tar', 'w') as tar:
        tar.add(tmp_path / 'src' / 'softmotion30_44k', arcname='softmotion30_44k')
    with pytest.raises(ValueError, match='traj_256_to_511.*truncated'):
        data.convert_bair(tmp_path / 'cut.tar', tmp_path / 'out1')
    victim.write_bytes(raw[:5000] + bytes([raw[5000] ^ 1]) + raw[5001:])  # one flipped bit: the data CRC fails
    with tarfile.open(tmp_path / 'flip.tar', 'w') as tar:
        tar.add(tmp_path / 'src' / 'softmotion30_44k', arcname='softmotion30_44k')
    with pytest.raises(ValueError, match='traj_256_to_511.*corrupt'):
        data.convert_bair(tmp_path / 'flip.tar', tmp_path / 'out2')
    whole = tar_path.read_bytes()
    (tmp_path / 'half.tar').write_bytes(whole[:len(whole) // 2])  # the download stopped half way
    with pytest.raises(OSError, match='half.tar'):
        data.convert_bair(tmp_path / 'half.tar', tmp_path / 'out3')
    for out in ('out1', 'out2', 'out3'):
        assert not (tmp_path / out / data.BAIR_MARKER).exists()


def test_data_bair_interrupted_conversion_is_refused(tmp_path, monkeypatch):
    tar_path, _ = _data_write_bair_tar(tmp_path, {'train': [2, 1], 'test': [1]})
    data.convert_bair(tar_path, tmp_path / 'bair')
    assert len(data.BAIR(tmp_path / 'bair')) == 2
    with pytest.raises(OSError, match='typo.tar'):
        data.convert_bair(tmp_path / 'typo.tar', tmp_path / 'bair')
    assert len(data.BAIR(tmp_path / 'bair')) == 2  # a wrong tar path leaves a finished dataset alone
    calls, parse = [], data._parse_bair_example

    def dies_on_third_record(record, name):
        calls.append(name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return parse(record, name)

    monkeypatch.setattr(data, '_parse_bair_example', dies_on_third_record)
    with pytest.raises(KeyboardInterrupt):
        data.convert_bair(tar_path, tmp_path / 'bair')  # a rerun over a finished directory, interrupted
    assert not (tmp_path / 'bair' / data.BAIR_MARKER).exists()
    with pytest.raises(FileNotFoundError, match='did not finish.*python data.py bair'):
        data.BAIR(tmp_path / 'bair')


def test_data_bair_download_failure_is_clear(tmp_path, monkeypatch):
    monkeypatch.setattr(data, 'BAIR_URL', 'http://127.0.0.1:9/bair_robot_pushing_dataset_v0.tar')
    with pytest.raises(RuntimeError, match='127.0.0.1:9.*by hand.*--tar'):
        data.download_bair(tmp_path)
    assert not list(tmp_path.iterdir())  # no .part file left


# ------------------------------------------------------------------------------------------------------------------
# Video folders and the grid


def _data_make_video_folder(root):
    """classA: 2 gifs (20 and 17 frames) + 1 mp4 (24 frames); classB: 1 gif (9 frames) + 1 too short (5 frames)."""
    rng = np.random.default_rng(0)
    stripes = np.zeros((20, 40, 80, 3), np.uint8)  # red | green | blue quarters: the centre crop is all green
    stripes[:, :, :20, 0], stripes[:, :, 20:60, 1], stripes[:, :, 60:, 2] = 255, 255, 255
    stripes[:, 0, 0] = np.arange(20)[:, None] * 10  # frames must differ, or the GIF writer merges them into one
    _data_write_video(root / 'classA' / 'stripes.gif', stripes)
    _data_write_video(root / 'classA' / 'noise.gif', rng.integers(0, 256, (17, 30, 30, 3), dtype=np.uint8))
    _data_write_video(root / 'classA' / 'sub' / 'clip.mp4', rng.integers(0, 256, (24, 48, 64, 3), dtype=np.uint8))
    _data_write_video(root / 'classB' / 'grey.gif', rng.integers(0, 256, (9, 36, 36), dtype=np.uint8))
    _data_write_video(root / 'classB' / 'short.gif', rng.integers(0, 256, (5, 36, 36, 3), dtype=np.uint8))


def test_data_video_folder(tmp_path, monkeypatch):
    root, cache = tmp_path / 'videos', tmp_path / 'cache'
    _data_make_video_folder(root)
    with pytest.warns(UserWarning, match='short.gif'):
        ds = data.VideoFolder(root, n_frames=8, resolution=32, train=False, cache_dir=cache)
    assert ds.classes == ['classA', 'classB']
    assert len(ds) == 3 + 2 + 2 + 1  # clip.mp4 24 // 8, noise 17 // 8, stripes 20 // 8, grey 9 // 8
    labels = [int(ds[i]['label']) for i in range(len(ds))]
    assert labels == [0] * 7 + [1]
    for i in range(len(ds)):
        assert ds[i]['video'].shape == (3, 8, 32, 32) and ds[i]['label'].dtype == torch.int64
    assert not data.random_windows(ds)  # evaluation clips do not depend on the RNG
    stripes = [ds[i]['video'] for i in range(len(ds)) if 'stripes' in ds.videos[ds.clips[i][0]].name][0]
    centre = (stripes[:, :, 4:-4, 4:-4] + 0.5) * 255  # away from the antialiased borders
    assert centre[1].min() > 200 and centre[0].max() < 60 and centre[2].max() < 60
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch['video'].shape == (4, 3, 8, 32, 32) and batch['label'].shape == (4,)

    def no_decoding(*args):
        raise AssertionError('decoded although the cache holds the video')

    monkeypatch.setattr(data, 'decode_video', no_decoding)  # a second pass reads only the cache
    with pytest.warns(UserWarning):
        again = data.VideoFolder(root, n_frames=8, resolution=32, train=True, cache_dir=cache)
    torch.manual_seed(0)
    assert again[0]['video'].shape == (3, 8, 32, 32)
    (root / 'classB' / 'grey.gif').touch()  # a changed file is decoded again
    with pytest.raises(AssertionError, match='decoded although'):
        data.VideoFolder(root, n_frames=8, resolution=32, cache_dir=cache)


def test_data_video_folder_errors_and_no_labels(tmp_path):
    flat = tmp_path / 'flat'
    _data_write_video(flat / 'a.gif', np.arange(8, dtype=np.uint8).repeat(1200).reshape(8, 20, 20, 3) * 30)
    ds = data.VideoFolder(flat, n_frames=4, resolution=16, cache_dir=tmp_path / 'cache')
    assert ds.classes == [] and 'label' not in ds[0] and len(ds) == 2
    (flat / 'bad.gif').write_bytes(b'not a gif at all')
    with pytest.raises(ValueError, match='bad.gif'):
        data.VideoFolder(flat, n_frames=4, resolution=16, cache_dir=tmp_path / 'cache')
    with pytest.raises(FileNotFoundError, match='no .mp4'):
        data.VideoFolder(tmp_path / 'cache', cache_dir=tmp_path / 'cache')


def test_data_save_video_grid(tmp_path):
    video = torch.rand(5, 1, 4, 16, 16) - 0.5
    video[0, :, :, :, :] = 0.5  # first tile white, to check the range mapping
    grid = data.save_video_grid(video, tmp_path / 'grid.gif', fps=5)
    assert grid.shape == (4, 2 * 18, 3 * 18, 3) and grid.dtype == np.uint8  # 3 per row, 1 px border per side
    assert grid[:, 1:17, 1:17].min() == 255 and grid[:, 0].max() == 0
    assert iio.imread(tmp_path / 'grid.gif').shape[:3] == (4, 36, 54)
    still = data.save_video_grid(video.numpy(), tmp_path / 'grid.png')
    assert still.shape == (5 * 18, 4 * 18, 3)
    np.testing.assert_array_equal(iio.imread(tmp_path / 'grid.png'), still)
    data.save_video_grid(torch.zeros(2, 3, 6, 16, 16), tmp_path / 'grid.mp4', nrow=2)
    assert len(list(iio.imiter(tmp_path / 'grid.mp4'))) == 6
    with pytest.raises(ValueError, match='.gif, .mp4 or .png'):
        data.save_video_grid(video, tmp_path / 'grid.jpg')


def test_data_save_video_grid_outlines_marked_regions():
    mark = torch.zeros(2, 3, 8, 8, dtype=torch.bool)
    mark[1, :, 2:6, 2:6] = True  # the second video: a 4 x 4 box in every frame
    grid = data.save_video_grid(torch.zeros(2, 1, 3, 8, 8) - 0.5, mark=mark, nrow=2)  # (3, 10, 20, 3)
    green = (grid[..., 1] == 220) & (grid[..., 0] == 40)
    tile = green[:, 1:9, 11:19]  # the second tile, inside its border
    ring = torch.zeros(8, 8, dtype=torch.bool)
    ring[2:6, 2:6] = True
    ring[3:5, 3:5] = False
    assert (tile == ring.numpy()).all() and not green[:, :, :10].any()


def test_data_write_bair_tar_round_trips_through_convert(tmp_path):
    # the synthetic archive of the notebooks' fast mode is in the real layout: convert_bair reads it back
    tar = tmp_path / 'bair.tar'
    data.write_bair_tar(tar, n_train_files=2, n_test_files=1, records_per_file=2, seed=0)
    data.convert_bair(tar, tmp_path / 'out', n_val_files=1)
    train = data.BAIR(tmp_path / 'out', 'train', n_frames=16, train=False)
    item = train[0]
    assert len(train) == 2 and item['video'].shape == (3, 16, 64, 64) and item['actions'].shape == (16, 4)
    assert item['video'].std() > 0.01  # a picture, not a blank frame


def test_synthetic_square_moves_by_its_actions_and_square_centres_finds_it(tmp_path):
    tar = data.write_bair_tar(tmp_path / 'bair.tar', n_train_files=2, n_test_files=1, records_per_file=4, seed=3)
    data.convert_bair(tar, tmp_path / 'out', n_val_files=1)
    clips = data.BAIR(tmp_path / 'out', 'train', n_frames=30, train=False)
    for item in (clips[i] for i in range(len(clips))):
        centres, colours = data.square_centres(item['video'][None])
        assert not centres.isnan().any()  # a square in every frame
        palette = torch.tensor(data.SYNTHETIC_COLOURS, dtype=torch.float32) / 255 - 0.5
        assert ((colours[0] - palette[:, None]).abs().amax(-1) < 0.01).all(-1).any()  # one palette colour throughout
        # positions are whole pixels: each move is the action rounded, except where the table's edge stops it
        moves, actions = centres[0].diff(dim=0), item['actions'][:-1, :2]  # 6: half the 12 px square, off the edge
        free = ((centres[0, 1:] - 6 > 0.5) & (centres[0, 1:] + 6 < 63.5) & (centres[0, :-1] - 6 > 0.5) &
                (centres[0, :-1] + 6 < 63.5)).all(-1)
        assert free.sum() > 5 and ((moves - actions)[free].abs() <= 1.0).all()
    blank = torch.tensor(data.SYNTHETIC_TABLE, dtype=torch.float32).view(1, 3, 1, 1, 1).expand(1, 3, 2, 64, 64)
    assert data.square_centres(blank / 255 - 0.5)[0].isnan().all()  # no square: no centre


# ------------------------------------------------------------------------------------------------------------------
# The digit reader (data.py): what a viewer would call legible, and which digits a prediction kept

def test_digit_scores_legible_and_kept_by_hand():
    probs = torch.full((3, 2, 10), 0.01)
    probs[0, 0, [3, 7]] = torch.tensor([0.9, 0.8])   # two digits, 3 and 7
    probs[0, 1, [3, 7]] = torch.tensor([0.9, 0.4])   # the second too unsure: not legible
    probs[1, :, 5] = 0.95                              # a pair of 5s: only one class fires
    probs[2, :, [1, 2]] = torch.tensor([0.7, 0.6])    # reads 1 and 2, but the video shows 1 and 4
    s = data.digit_scores(probs, torch.tensor([[7, 3], [5, 5], [1, 4]]))
    assert s['legible'].tolist() == [[True, False], [False, False], [True, True]]
    assert s['kept'].tolist() == [[True, False], [True, True], [False, False]]  # named: p > 0.5 for both


def test_eval_reads_two_digit_moving_mnist_with_the_digit_reader(tmp_path, capsys):
    """eval on two-digit Moving MNIST adds the reader's legible / kept for real frames and reconstructions (the
    ceilings), and kept for the prediction beside black frames (never kept) and the last frame repeated."""
    _data_fake_mnist(tmp_path / 'mnist', n=40)  # random pixels in MNIST's real format: the tests have no MNIST
    torch.manual_seed(0)
    vq = tiny_vqvae(sequence_length=4, resolution=64, downsample=(2, 8, 8))
    vq(torch.rand(2, 1, 4, 64, 64) - 0.5)
    data.save_checkpoint(tmp_path / 'vq.pt', kind='vqvae', config=dataclasses.asdict(vq.config),
                         model=vq.state_dict(), train_config=dict(mnist_dir=str(tmp_path / 'mnist'), n_digits=2))
    gpt = tiny_gpt(n_codes=32, latent_shape=(2, 8, 8))
    data.save_checkpoint(tmp_path / 'gpt.pt', kind='gpt', config=dataclasses.asdict(gpt.config), model=gpt.state_dict(),
                         train_config=dict(mnist_dir=str(tmp_path / 'mnist'), n_digits=2), vqvae_rel='vq.pt')
    vg.main(['eval', '--vqvae', str(tmp_path / 'vq.pt'), '--gpt', str(tmp_path / 'gpt.pt'), '--n', '2', '--context',
             '4', '--future', '2', '--top-k', '1', '--json', str(tmp_path / 'e.json')])
    scores = json.load(open(tmp_path / 'e.json'))
    for key in ('legible real', 'kept real', 'legible reconstructed', 'kept reconstructed', '4->2 kept',
                '4->2 kept last frame', '4->2 mse black', '4->2 ssim last frame'):
        assert 0 <= scores[key] <= (1 if 'mse' not in key else 4096), key
    assert scores['4->2 kept black'] == 0.0 and 'kept real' in capsys.readouterr().out


def test_shuffle_tiles_keeps_the_pixels_and_breaks_the_layout():
    images, _ = data.render_font_digits(2)
    frame = np.zeros((64, 64), np.uint8)
    frame[10:38, 5:33], frame[30:58, 30:58] = images[0], images[1]
    for tile in (8, 16):
        out = data.shuffle_tiles(frame, tile, np.random.default_rng(0))
        assert sorted(out.ravel().tolist()) == sorted(frame.ravel().tolist()) and not np.array_equal(out, frame)


def test_reader_frames_targets_match_what_is_drawn():
    images, labels = data.render_font_digits(40)
    x, y = data.reader_frames(images, labels, 64, np.random.default_rng(1))
    assert x.shape == (64, 1, 64, 64) and -0.5 <= x.min() and x.max() <= 0.5
    ink = (x > 0).flatten(1).any(1)
    assert set(y.sum(1).tolist()) <= {0.0, 1.0, 2.0} and ink[y.sum(1) > 0].all()  # a labelled digit has ink


def test_committed_prior_is_hash_checked_and_told_or_not_told_the_digits():
    """The committed two-digit prior loads (sha256 checked), takes the two classes as cond, and samples without one."""
    vqvae, gpt = vg.load_pretrained('moving-mnist')
    assert gpt.config.cond_dim == 10 and gpt.config.cond_dropout > 0
    codes = vqvae.encode(torch.zeros(2, 1, 8, 64, 64) - 0.5)  # black clips
    told, _ = gpt(codes, cond=torch.tensor([[3, 7], [0, 0]]))
    untold, _ = gpt(codes)  # the null condition
    assert (told - untold).abs().max() > 0.1  # the classes change the prediction
    a, b = (gpt.sample(1, cond=torch.tensor([[3, 7]]), guidance=3.0, generator=torch.Generator().manual_seed(0),
                       given=codes[:1], given_mask=vg.task_mask('fp', gpt.config.latent_shape, 3)) for _ in range(2))
    assert torch.equal(a, b) and torch.equal(a[:, :3], codes[:1, :3])  # seeded, the given prefix kept


def test_committed_digit_reader_reads_blank_and_fragments_as_no_digit():
    """Scribbles must not pass for digits: blank frames, and real two-digit frames cut into 8 or 16 px tiles that
    are shuffled and turned (strokes of digit size, no digit), read as at most one digit in >= 95% of frames."""
    reader = data.load_digit_reader()
    images, labels = data.render_font_digits(60, seed=3)  # the tests have no MNIST: rendered digits stand in
    rng = np.random.default_rng(0)
    frames = np.zeros((40, 64, 64), np.uint8)
    for f in frames:
        for k, (y, x) in zip(rng.integers(60, size=2), rng.integers(0, 37, size=(2, 2))):
            np.maximum(f[y:y + 28, x:x + 28], images[k], out=f[y:y + 28, x:x + 28])
    fragments = np.stack([data.shuffle_tiles(f, int(rng.choice([8, 16])), rng) for f in frames])
    for name, video in (('blank', np.zeros_like(frames)), ('fragments', fragments)):
        probs = data.read_digits(reader, data.to_video(video)[None])  # (1, 40, 10)
        legible = data.digit_scores(probs)['legible'].float().mean().item()
        assert legible <= 0.05, (name, legible)
    whole = data.digit_scores(data.read_digits(reader, data.to_video(frames)[None]))['legible'].float().mean()
    assert whole >= 0.5, whole  # the same strokes, as digits, do read as two digits (rendered, not MNIST: lower)
