"""How much would a compiled decode step buy? A prototype for the sampling workload, not used by videogpt.py.

    python benchmarks/compiled_decode.py      # 256 tokens (4x8x8), batch 4, width 192, 4 layers, 2 threads

The library's KV-cached step slices the cache to the current length, so its shapes change at every token. Here one
token's step reads a cache of fixed length with a mask instead, so that `torch.compile` can build it once. It prints
tokens per second for `VideoGPT.sample`, the fixed-shape step in eager mode, and compiled (default, C++ wrapper,
max-autotune), and checks that every variant draws the same codes.
"""
import os
import sys
import time

import torch
import torch._inductor.config as inductor_config
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import videogpt as vg  # noqa: E402

torch.set_num_threads(2)
torch.manual_seed(0)
model = vg.VideoGPT(vg.GPTConfig(n_codes=512, latent_shape=(4, 8, 8), n_layer=4, n_head=4, n_embd=192)).eval()
B, L, D, NH = 4, model.config.block_size, model.config.n_embd, model.config.n_head


def step(x, pos, caches, pos_emb):
    """x (B, 1, D) the last token's embedding at position pos (a 0-dim tensor) -> logits (B, K); fills the caches."""
    x = x + pos_emb.index_select(0, pos.view(1))[None]
    visible = (torch.arange(L) <= pos).view(1, 1, 1, L)  # the fixed-length cache, masked beyond pos
    for block, cache in zip(model.blocks, caches):
        qkv = block.attn.qkv(block.ln1(x)).view(B, 1, 3, NH, D // NH).permute(2, 0, 3, 1, 4)
        cache.index_copy_(3, pos.view(1), qkv[1:])
        y = F.scaled_dot_product_attention(qkv[0], cache[0], cache[1], attn_mask=visible)
        x = x + block.attn.proj(y.transpose(1, 2).reshape(B, 1, D))
        x = x + block.mlp(block.ln2(x))
    return model.head(model.ln_f(x))[:, -1].float()


@torch.no_grad()
def sample(fn):
    caches = [torch.zeros(2, B, NH, L, D // NH) for _ in model.blocks]
    pos_emb, codes = model.pos_emb().reshape(L, D), torch.empty(B, L, dtype=torch.long)
    x, g = model.sos.expand(B, 1, -1), torch.Generator().manual_seed(0)
    for i in range(L):
        codes[:, i] = vg.sample_logits(fn(x, torch.tensor(i), caches, pos_emb), generator=g)
        x = model.tok_emb(codes[:, i:i + 1])
    return codes


def rate(fn):
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return B * L / min(times), out


with torch.no_grad():
    print(f"VideoGPT.sample: {rate(lambda: model.sample(B))[0]:,.0f} tok/s")
reference = None
for name, compiled, options in (('fixed-shape step, eager', False, {}), ('compiled', True, {}),
                                ('compiled, C++ wrapper', True, dict(cpp_wrapper=True)),
                                ('compiled, max-autotune', True, dict(mode='max-autotune-no-cudagraphs'))):
    torch._dynamo.reset()
    inductor_config.cpp_wrapper = options.get('cpp_wrapper', False)
    fn = torch.compile(step, dynamic=False, mode=options.get('mode')) if compiled else step
    tok_s, codes = rate(lambda: sample(fn))
    reference = codes if reference is None else reference
    print(f"{name}: {tok_s:,.0f} tok/s, same codes as eager: {torch.equal(codes, reference)}")
