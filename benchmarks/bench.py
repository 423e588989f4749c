"""Speed and memory of VideoGPT's fixed workloads, against the original code's numbers on the same machine kind.

    python benchmarks/bench.py                 # CPU, 2 threads: every workload, each in a fresh process
    python benchmarks/bench.py --device cuda   # GPU: bf16 steps, sampling, and MFU at the benchmark and BAIR sizes

Each workload runs in its own process so that its peak RSS is its own. Timings are medians over repeated steps after
warm-up; variants (fused vs reference attention, cached vs uncached sampling) run in the same process and are
reported as ratios, which the machine's noise affects far less than absolute times.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import videogpt as vg  # noqa: E402

# The original code (wilson1yan/VideoGPT) on a 2-core CPU with 2 threads, measured by the project on these workloads.
ORIGINAL = dict(vqvae_step_s=0.67, vqvae_rss_gb=0.93, prior_step_s=14.2, prior_rss_gb=2.5, sample_tok_s=1374)
# Dense bf16 tensor-core peak of the GPUs this runs on (NVIDIA datasheets, SXM parts, without sparsity).
PEAK_BF16 = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12}


def vqvae_cfg():  # 16x64x64 RGB, downsample (2, 4, 4), 64 hidden, 2 residual layers, 512 codes (original's E = 256)
    return vg.VQVAEConfig(in_channels=3, sequence_length=16, resolution=64, downsample=(2, 4, 4), n_hiddens=64,
                          n_res_layers=2, n_codes=512, embedding_dim=256)


def prior_cfg(latent_shape, **kw):  # width 192, 4 layers, 4 heads
    return vg.GPTConfig(n_codes=512, latent_shape=latent_shape, n_layer=4, n_head=4, n_embd=192, **kw)


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux reports KiB


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def time_steps(fn, device, n, warmup=2):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def train_step_fn(model, batch_fn, device, dtype):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == 'cuda')

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = batch_fn(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def prior_flops_per_token(cfg):
    """Training FLOPs per token: 6 N for the matmuls (N = non-embedding parameters) + 12 n_layer L D for attention."""
    D, L = cfg.n_embd, cfg.block_size
    n_params = cfg.n_layer * 12 * D * D + D * cfg.n_codes  # blocks (qkv, proj, 4D MLP) + output head
    return 6 * n_params + 12 * cfg.n_layer * L * D


def run_one(name, device, steps):
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == 'cuda' else None
    res = dict(workload=name, device=torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu',
               threads=torch.get_num_threads())
    if name == 'vqvae':
        model = vg.VQVAE(vqvae_cfg()).to(device)
        x = torch.rand(4, 3, 16, 64, 64, device=device) - 0.5
        res['step_s'] = time_steps(train_step_fn(model, lambda m: m(x)['loss'], device, dtype), device, steps)
    elif name in ('prior', 'prior-bair'):
        if name == 'prior':  # 2,048 tokens (8x16x16), batch 4
            cfg, batch = prior_cfg((8, 16, 16)), 4
        else:  # the paper's BAIR prior: 8x32x32 = 8,192 tokens, frame + action conditioning
            cfg, batch = vg.preset_configs('bair-8x32x32')[1], 8
        model = vg.VideoGPT(cfg).to(device)
        codes = torch.randint(0, cfg.n_codes, (batch, *cfg.latent_shape), device=device)
        frames = torch.rand(batch, 3, cfg.n_cond_frames, 64, 64, device=device) - 0.5 if cfg.n_cond_frames else None
        cond = torch.randn(batch, cfg.cond_dim, device=device) if cfg.cond_dim else None
        step = train_step_fn(model, lambda m: m(codes, frames, cond)[1], device, dtype)
        res['step_s'] = time_steps(step, device, steps)
        res['tokens_per_s'] = batch * cfg.block_size / res['step_s']
        if device.type == 'cuda':
            peak = next((v for k, v in PEAK_BF16.items() if k in res['device']), None)
            flops = prior_flops_per_token(cfg) * res['tokens_per_s']
            res['tflops'] = flops / 1e12
            res['mfu'] = flops / peak if peak else None
        res['peak_rss_gb'] = peak_rss_gb()  # before the variant, whose L x L attention matrices would dominate it
        if name == 'prior':  # variant in the same process: the explicit-softmax reference attention
            for m in model.modules():
                if hasattr(m, 'fast'):
                    m.fast = False
            res['reference_attention_step_s'] = time_steps(step, device, max(1, steps // 2), warmup=1)
    elif name == 'sample':  # 256 tokens (4x8x8), batch 4
        model = vg.VideoGPT(prior_cfg((4, 8, 8))).to(device).eval()
        gen = torch.Generator(device).manual_seed(0)
        t = time_steps(lambda: model.sample(4, generator=gen), device, steps)
        res['sample_s'], res['tokens_per_s'] = t, 4 * 256 / t
        res['peak_rss_gb'] = peak_rss_gb()

        @torch.no_grad()
        def uncached():  # the same 256 tokens by a full forward pass per token, as without a KV cache
            codes = torch.zeros(4, 256, dtype=torch.long, device=device)
            for i in range(256):
                logits, _ = model(codes.view(4, 4, 8, 8))
                codes[:, i] = logits.view(4, 256, -1)[:, i].argmax(-1)
        res['uncached_tokens_per_s'] = 4 * 256 / time_steps(uncached, device, 1, warmup=0)
    if device.type == 'cuda':
        res['peak_gpu_gb'] = torch.cuda.max_memory_allocated() / 1e9
    res.setdefault('peak_rss_gb', peak_rss_gb())
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, default=2, help="CPU threads (the original was measured with 2)")
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--one', help="run a single workload in this process and print its JSON")
    p.add_argument('--workloads', default='vqvae,prior,sample')
    p.add_argument('--json', help="also write the results to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(args.one, torch.device(args.device), args.steps)))
        return
    rows = []
    for name in args.workloads.split(','):
        out = subprocess.run([sys.executable, __file__, '--one', name, '--device', args.device, '--threads',
                              str(args.threads), '--steps', str(args.steps)], capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
    print(f"\n| workload | ours | original | speed-up | peak RSS ours / original |")
    print("|---|---|---|---|---|")
    for r in rows:
        if r['workload'] == 'vqvae':
            print(f"| VQ-VAE train step | {r['step_s']:.3f} s | {ORIGINAL['vqvae_step_s']} s | "
                  f"{ORIGINAL['vqvae_step_s'] / r['step_s']:.2f}x | {r['peak_rss_gb']:.2f} / "
                  f"{ORIGINAL['vqvae_rss_gb']} GB = {r['peak_rss_gb'] / ORIGINAL['vqvae_rss_gb']:.2f} |")
        elif r['workload'] == 'prior':
            print(f"| prior train step (2,048 tokens) | {r['step_s']:.3f} s | {ORIGINAL['prior_step_s']} s | "
                  f"{ORIGINAL['prior_step_s'] / r['step_s']:.2f}x | {r['peak_rss_gb']:.2f} / "
                  f"{ORIGINAL['prior_rss_gb']} GB = {r['peak_rss_gb'] / ORIGINAL['prior_rss_gb']:.2f} |")
            print(f"|   reference attention / SDPA step time | {r['reference_attention_step_s'] / r['step_s']:.2f}x "
                  f"| | | |")
        elif r['workload'] == 'sample':
            print(f"| sampling, 256 tokens x 4 | {r['tokens_per_s']:.0f} tok/s | {ORIGINAL['sample_tok_s']} tok/s | "
                  f"{r['tokens_per_s'] / ORIGINAL['sample_tok_s']:.2f}x | {r['peak_rss_gb']:.2f} GB |")
            print(f"|   KV cache / no cache | {r['tokens_per_s'] / r['uncached_tokens_per_s']:.1f}x | | | |")
        if 'mfu' in r and r['mfu'] is not None:
            print(f"| {r['workload']} bf16 MFU on {r['device']} | {100 * r['mfu']:.1f} % "
                  f"({r['tflops']:.0f} TFLOP/s, {r['tokens_per_s']:.0f} tok/s) | | | |")


if __name__ == '__main__':
    main()
