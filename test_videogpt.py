"""Tests for videogpt.py (and data.py): tiny configs on CPU, all seeded. Run: python -m pytest -q test_videogpt.py"""
import copy
import math
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

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
    # one set of tables, and it gets gradient through both halves
    assert sum(isinstance(x, vg.AxisPositionEmbedding) for x in m.modules()) == 1
    out = m.decoder(torch.randn(2, 16, 2, 4, 4), m.pos())
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.pos.parameters())


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
    cb = vg.EMACodebook(8, 4, decay=0.99)
    z = torch.randn(2, 4, 2, 4, 4)  # 64 vectors
    cb(z)
    assert cb.initialized
    flat = z.permute(0, 2, 3, 4, 1).reshape(-1, 4)
    # every code was drawn from an encoder output, then moved by EMA toward its assigned mean: still in the cloud
    assert (cb.embeddings.abs().max() <= flat.abs().max() + 1e-4)


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
    ln = vg.LayerNorm(8, cond_dim=3)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(ln(x, torch.randn(2, 3)), F.layer_norm(x, (8,)))


def test_class_labels_and_action_sequences_as_cond():
    g = tiny_gpt(cond_dim=4).eval()
    codes = torch.randint(0, 16, (2, 2, 3, 3))
    by_label, _ = g(codes, cond=torch.tensor([1, 3]))
    by_onehot, _ = g(codes, cond=F.one_hot(torch.tensor([1, 3]), 4).float())
    torch.testing.assert_close(by_label, by_onehot)
    g2 = tiny_gpt(cond_dim=8).eval()  # BAIR: (B, T, 4) actions, flattened
    assert g2(codes, cond=torch.randn(2, 2, 4))[0].shape == (2, 2, 3, 3, 16)


def test_loss_is_mean_cross_entropy_in_nats():
    g = tiny_gpt().eval()
    codes = torch.randint(0, 16, (2, 2, 3, 3))
    logits, loss = g(codes)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 16), codes.reshape(-1)))
    assert abs(loss.item() - math.log(16)) < 0.3  # near uniform at initialisation


def test_masked_decoding_samples_valid_codes():
    g = tiny_gpt(causal=False).eval()
    codes = g.sample(2, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, 2, 3, 3) and codes.min() >= 0 and codes.max() < 16
    _, loss = g(torch.randint(0, 16, (2, 2, 3, 3)))
    assert torch.isfinite(loss)


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
    _raises(ValueError, r'not divisible.*crop or resize', lambda: m(video(H=9)))
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
    _raises(ValueError, r'frame-conditioned.*\(2, 3, 2, 16, 16\)', lambda: gf(codes, frames=torch.zeros(2, 3, 1, 16, 16)))
    _raises(ValueError, r'sample_masked needs.*causal=False', lambda: tiny_gpt().sample_masked(1))


# ------------------------------------------------------------------------------------------------------------------
# Training loop: resume, NaN guard, distributed, command line


class _Clips(torch.utils.data.Dataset):
    """Tiny deterministic videos (1, 4, 8, 8) with a random crop offset drawn from torch's global RNG, like BAIR."""

    def __init__(self, n=16, with_label=False):
        self.videos = torch.rand(n, 1, 6, 8, 8, generator=torch.Generator().manual_seed(3)) - 0.5
        self.with_label = with_label

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, idx):
        s = int(torch.randint(3, ()))
        item = {'video': self.videos[idx, :, s:s + 4]}
        if self.with_label:
            item['label'] = torch.tensor(idx % 3)
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
    torch.manual_seed(0)
    full = vg.train(make(), kind, step_fn, _Clips(), _tcfg(tmp_path / 'full'), cfg_of(make))
    torch.manual_seed(0)
    with pytest.raises(_Interrupt):  # killed during step 5; the last checkpoint is from step 3
        vg.train(make(), kind, _interrupt_after(step_fn, 4), _Clips(), _tcfg(tmp_path / 'cut'), cfg_of(make))
    assert vg.load_checkpoint(tmp_path / 'cut' / 'ckpt.pt')['step'] == 3
    resumed = vg.train(make(), kind, step_fn, _Clips(), _tcfg(tmp_path / 'cut', resume=True), cfg_of(make))
    return full.state_dict(), resumed.state_dict()


def cfg_of(make):
    return make().config


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


def test_checkpoint_contents_and_reload(tmp_path):
    vg.train(tiny_vqvae(), 'vqvae', vg.vqvae_step, _Clips(), _tcfg(tmp_path), _tiny_vcfg())
    ckpt = vg.load_checkpoint(tmp_path / 'ckpt.pt')
    assert {'kind', 'config', 'model', 'optimizer', 'step', 'rng', 'train_config'} <= set(ckpt)
    assert not os.path.exists(str(tmp_path / 'ckpt.pt') + '.tmp')
    m = vg.load_model(tmp_path / 'ckpt.pt')
    assert isinstance(m, vg.VQVAE) and not m.training and m.codebook.initialized
    assert (tmp_path / 'metrics.jsonl').read_text().count('\n') == 6
    assert (tmp_path / 'loss.png').exists()


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


def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist
    tcfg = vg.TrainConfig(out_dir=out_dir, steps=4, batch_size=2, lr=1e-3, warmup=1, ckpt_every=100,
                          sample_every=100, log_every=100, num_workers=0, seed=5)
    # each rank sees different data (the sampler is seeded by rank), so only synchronisation can make them agree
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
    a, b = (torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in (0, 1))
    assert a['codebook.initialized']
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and training did something: the codebook moved away from its initial state on both
    assert not torch.equal(a['codebook.embed_sum'], a['codebook.embeddings'] * a['codebook.cluster_size'][:, None])
