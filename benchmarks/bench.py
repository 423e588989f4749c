"""Speed and memory of VideoGPT's fixed workloads, and of the original code's, side by side in one run.

    python benchmarks/bench.py --original DIR      # CPU, 2 threads: ours and the original's, true ratios
    python benchmarks/bench.py --scaling --original DIR   # and how cost grows with batch and sequence length
    python benchmarks/bench.py                     # ours only: absolute figures, no ratios
    python benchmarks/bench.py --device cuda       # GPU: bf16 steps, sampling, and MFU at the benchmark and BAIR sizes

DIR is a checkout of the original code (github.com/wilson1yan/VideoGPT): the folder that holds its `videogpt/`
package. Ratios are only meaningful when both sides run on the same machine in the same run: the same workload runs
2-2.6x slower on one 2-core machine than on another of the same kind. Each workload runs in its own process so that
its peak RSS is its own. Timings are medians over repeated steps after warm-up; variants (fused vs reference
attention, cached vs uncached sampling) run in the same process and are reported as ratios. --repeat N runs each
workload N times, ours next to the original's, and reports the median run: one run of each side can land in
different spells of a machine.
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


KINDS = ('vqvae', 'prior', 'prior-bair', 'sample')  # workloads, each of ours beside the original's with --original
# Latent grids by token count: the prior step's 2,048 and the sampling workload's 256 are the fixed workloads.
GRIDS = {256: (4, 8, 8), 1024: (4, 16, 16), 2048: (8, 16, 16), 4096: (16, 16, 16), 8192: (8, 32, 32)}


def parse(name):
    """'prior', 'prior@8192', 'sample@1024@16', 'orig-prior@4096' -> (side, kind, tokens, batch). The fixed workloads
    are 'prior' (2,048 tokens, batch 4) and 'sample' (256, batch 4); a prior with a token count runs at batch 1."""
    original = name.startswith('orig-')
    kind, *sizes = name.removeprefix('orig-').split('@')
    tokens, batch = (list(map(int, sizes)) + [None, None])[:2]
    if kind in ('prior', 'sample'):
        batch = batch or (1 if kind == 'prior' and sizes else 4)
        tokens = tokens or (2048 if kind == 'prior' else 256)
        if tokens not in GRIDS:
            sys.exit(f"{name}: token counts are {', '.join(map(str, GRIDS))}")
    return ('original' if original else 'ours'), kind, tokens, batch


def run_one(name, device, steps, original_dir=None, dropout=0.0):
    side, kind, tokens, batch = parse(name)
    if side == 'original':
        return run_original(kind, tokens, batch, steps, original_dir, dropout)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == 'cuda' else None
    res = dict(workload=name, side=side, device=torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu',
               threads=torch.get_num_threads(), tokens=tokens, batch=batch)
    if kind == 'vqvae':
        model = vg.VQVAE(vqvae_cfg()).to(device)
        x = torch.rand(4, 3, 16, 64, 64, device=device) - 0.5
        step = train_step_fn(model, lambda m: m(x)['loss'], device, dtype)
        res['step_s'] = time_steps(step, device, steps)
        res['peak_rss_gb'] = peak_rss_gb()
    elif kind in ('prior', 'prior-bair'):
        if kind == 'prior':
            cfg = prior_cfg(GRIDS[tokens], dropout=dropout, attn_dropout=dropout)
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
    elif kind == 'sample':
        model = vg.VideoGPT(prior_cfg(GRIDS[tokens])).to(device).eval()
        gen = torch.Generator(device).manual_seed(0)
        t = time_steps(lambda: model.sample(batch, generator=gen), device, steps, warmup=1)
        res['sample_s'], res['tokens_per_s'] = t, batch * tokens / t
        res['peak_rss_gb'] = peak_rss_gb()
        if name == 'sample':
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


def check_original(root):
    if not os.path.isfile(os.path.join(root or '', 'videogpt', 'gpt.py')):
        sys.exit(f"--original {root}: no videogpt/gpt.py there: pass the folder that holds the original's videogpt/")


def load_original(root):
    """The original code's VQVAE and VideoGPT classes, imported from a checkout as package `original_videogpt` (so
    that it cannot be mistaken for ours), with stand-ins for what its modules import but these workloads never use."""
    import argparse as ap
    import importlib
    import types
    check_original(root)

    class LightningModule(torch.nn.Module):  # the classes use Lightning as a base class and to log hyper-parameters
        def save_hyperparameters(self, *args, **kwargs):
            pass
    stand_ins = {'pytorch_lightning': dict(LightningModule=LightningModule, LightningDataModule=object),
                 'skvideo': {}, 'skvideo.io': {}, 'original_videogpt': dict(__path__=[os.path.join(root, 'videogpt')]),
                 'original_videogpt.download': dict(load_vqvae=None)}  # set per workload: the prior's VQ-VAE
    for module, attrs in stand_ins.items():
        sys.modules[module] = types.ModuleType(module)
        sys.modules[module].__dict__.update(attrs)
    vqvae = importlib.import_module('original_videogpt.vqvae')
    gpt = importlib.import_module('original_videogpt.gpt')
    return vqvae.VQVAE, gpt.VideoGPT, ap.Namespace


def run_original(kind, tokens, batch, steps, root, dropout=0.0):
    """The same workloads on the original code: its own classes, our timing; random data of the same shapes."""
    VQVAE, VideoGPT, Args = load_original(root)
    torch.manual_seed(0)
    res = dict(workload=f"orig-{kind}" + (f"@{tokens}@{batch}" if tokens else ''), side='original', device='cpu',
               threads=torch.get_num_threads(), tokens=tokens, batch=batch)
    cpu = torch.device('cpu')
    if kind == 'vqvae':  # its configuration of the VQ-VAE workload (embedding_dim 256 as in vqvae_cfg)
        model = VQVAE(Args(embedding_dim=256, n_codes=512, n_hiddens=64, n_res_layers=2, downsample=(2, 4, 4),
                           sequence_length=16, resolution=64))
        x = torch.rand(4, 3, 16, 64, 64) - 0.5

        def loss(m):
            recon_loss, _, vq = m(x)
            return recon_loss + vq['commitment_loss']
        step = train_step_fn(model, loss, cpu, None)
        res['step_s'] = time_steps(step, cpu, steps)
        res['peak_rss_gb'] = peak_rss_gb()
    else:  # the prior needs a VQ-VAE for its codebook only: a small one whose latent grid is the workload's
        t, h, w = GRIDS[tokens]
        vq = VQVAE(Args(embedding_dim=64, n_codes=512, n_hiddens=32, n_res_layers=1, downsample=(4, 4, 4),
                        sequence_length=4 * t, resolution=4 * h))
        vq.codebook._need_init = False
        sys.modules['original_videogpt.download'].load_vqvae = lambda path: vq
        model = VideoGPT(Args(vqvae='', n_cond_frames=0, class_cond=False, class_cond_dim=None, hidden_dim=192,
                              heads=4, layers=4, dropout=dropout, attn_type='full', attn_dropout=dropout,
                              resolution=4 * h, sequence_length=4 * t))
        if kind == 'prior':
            codes = torch.randint(0, 512, (batch, t, h, w))
            emb = vq.codebook.dictionary_lookup(codes)
            res['step_s'] = time_steps(train_step_fn(model, lambda m: m(emb, codes, {})[0], cpu, None), cpu, steps)
            res['tokens_per_s'] = batch * tokens / res['step_s']
        else:
            model.eval()
            vq.decode = lambda codes: codes.float()  # sampling alone: its sample() decodes to pixels at the end
            res['sample_s'] = time_steps(lambda: model.sample(batch), cpu, steps, warmup=1)
            res['tokens_per_s'] = batch * tokens / res['sample_s']
    res.setdefault('peak_rss_gb', peak_rss_gb())
    return res


SCALING = ([f'sample@{L}@{B}' for L in (256, 1024, 2048) for B in (1, 4, 16, 64)] +
           [f'prior@{L}' for L in (1024, 2048, 4096, 8192)])
ORIGINAL_SCALING = [f'orig-sample@{L}@4' for L in (256, 1024, 2048)] + [f'orig-prior@{L}' for L in (1024, 2048,
                                                                                                   4096, 8192)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, default=2, help="CPU threads")
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--original', default='', help="a checkout of the original code: run its workloads too")
    p.add_argument('--scaling', action='store_true', help="add tokens/s against batch and length, and the prior "
                   "step against length (batch 1; with --original, the original's too), 2 steps each")
    p.add_argument('--dropout', type=float, default=0.0, help="the priors' dropout and attention dropout, both sides")
    p.add_argument('--one', help="run a single workload in this process and print its JSON")
    p.add_argument('--workloads', default='vqvae,prior,sample')
    p.add_argument('--repeat', type=int, default=1, help="run each workload this many times, ours and the "
                   "original's in turn, and report each one's median run: this machine's speed drifts within minutes")
    p.add_argument('--json', help="also write the results to this file")
    args = p.parse_args()
    if min(args.threads, args.steps, args.repeat) < 1:
        p.error("--threads, --steps and --repeat must be at least 1")
    for name in args.workloads.split(','):  # a name we cannot run is a usage error, before anything runs
        try:
            known = parse(name)[1] in KINDS and not name.startswith('orig-')
        except ValueError:  # 'prior@many'
            known = False
        if not known:
            p.error(f"--workloads: no workload {name!r}; choose from {', '.join(KINDS)}, prior@TOKENS or "
                    f"sample@TOKENS@BATCH (TOKENS: {', '.join(map(str, GRIDS))}), separated by commas")
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_one(args.one, torch.device(args.device), args.steps, args.original, args.dropout)))
        return
    if args.original:  # fail now, not after our workloads: the original's classes must import and have their methods
        try:
            vqvae, gpt, _ = load_original(args.original)
            vqvae.decode, gpt.sample  # noqa: B018 (what the workloads call)
        except Exception as e:
            sys.exit(f"--original {args.original} is not the original code ({type(e).__name__}: "
                     f"{(str(e).splitlines() or [''])[0]}): pass the folder that holds a checkout of "
                     "github.com/wilson1yan/VideoGPT's videogpt/")
    # Each of ours next to the original's: a slow spell of the machine then hits both sides of a ratio alike.
    names = []
    for n in args.workloads.split(','):
        names += [n] + (['orig-' + n] if args.original and n in ('vqvae', 'prior', 'sample') else [])
    scaling = (SCALING + (ORIGINAL_SCALING if args.original else [])) if args.scaling else []
    runs = {}
    for _ in range(args.repeat):
        for name in names + scaling:
            out = subprocess.run([sys.executable, __file__, '--one', name, '--device', args.device, '--threads',
                                  str(args.threads), '--steps', str(2 if name in scaling else args.steps),
                                  '--original', args.original, '--dropout', str(args.dropout)], capture_output=True,
                                 text=True)
            if out.returncode:
                sys.exit(out.stderr)
            runs.setdefault(name, []).append(dict(json.loads(out.stdout.strip().splitlines()[-1]), workload=name))
            print(json.dumps(runs[name][-1]), flush=True)
    rows = [median_run(runs[name]) for name in names + scaling]
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
    print_tables(rows)


def median_run(rows):
    """The run with the median time of one workload's runs, with every run's time listed under 'runs'."""
    key = 'step_s' if 'step_s' in rows[0] else 'sample_s'
    rows = sorted(rows, key=lambda r: r[key])
    return dict(rows[(len(rows) - 1) // 2], runs=[r[key] for r in rows])


def print_tables(rows):
    by = {r['workload']: r for r in rows}
    print("\n| workload | ours | original | speed-up | peak RSS ours / original |\n|---|---|---|---|---|")
    for name, what, key in (('vqvae', 'VQ-VAE train step', 'step_s'), ('sample', 'sampling, 256 tokens x 4',
                            'tokens_per_s'), ('prior', 'prior train step (2,048 tokens x 4)', 'step_s')):
        r, o = by.get(name), by.get('orig-' + name)
        if r is None:
            continue
        show = (lambda x: f"{x[key]:,.0f} tok/s") if key == 'tokens_per_s' else (lambda x: f"{x[key]:.3f} s")
        if o is None:
            print(f"| {what} | {show(r)} | (no --original) | | {r['peak_rss_gb']:.2f} GB |")
            continue
        speed = r[key] / o[key] if key == 'tokens_per_s' else o[key] / r[key]
        print(f"| {what} | {show(r)} | {show(o)} | {speed:.2f}x | {r['peak_rss_gb']:.2f} / {o['peak_rss_gb']:.2f} GB"
              f" = {r['peak_rss_gb'] / o['peak_rss_gb']:.2f} |")
    if 'reference_attention_step_s' in by.get('prior', {}):
        ratio = by['prior']['reference_attention_step_s'] / by['prior']['step_s']
        print(f"| reference attention / SDPA, prior step | {ratio:.2f}x | | | |")
    if 'uncached_tokens_per_s' in by.get('sample', {}):
        print(f"| KV cache / no cache | {by['sample']['tokens_per_s'] / by['sample']['uncached_tokens_per_s']:.1f}x "
              "| | | |")
    samples = [r for r in rows if r['workload'].startswith('sample@')]
    if samples:
        batches = sorted({r['batch'] for r in samples})
        print("\nSampling, tokens/s over the batch:\n\n| tokens | " + ' | '.join(f"batch {b}" for b in batches) +
              " | original, batch 4 |\n" + "|---" * (len(batches) + 2) + "|")
        for L in sorted({r['tokens'] for r in samples}):
            cells = [by.get(f'sample@{L}@{b}', {}).get('tokens_per_s') for b in batches]
            cells.append(by.get(f'orig-sample@{L}@4', {}).get('tokens_per_s'))
            print(f"| {L:,} | " + ' | '.join('' if c is None else f"{c:,.0f}" for c in cells) + " |")
    priors = [r for r in rows if r['workload'].startswith('prior@')]
    if priors:
        print("\nPrior train step, batch 1:\n\n| tokens | ours | peak RSS | original | peak RSS | speed-up |\n"
              "|---|---|---|---|---|---|")
        for r in priors:
            o = by.get('orig-' + r['workload'])
            theirs = (f"{o['step_s']:.2f} s | {o['peak_rss_gb']:.2f} GB | {o['step_s'] / r['step_s']:.1f}x" if o else
                      " | | ")
            print(f"| {r['tokens']:,} | {r['step_s']:.3f} s | {r['peak_rss_gb']:.2f} GB | {theirs} |")
    if len(rows[0].get('runs', [])) > 1:
        print("\nEach workload's runs, fastest first (the tables use the median):\n\n" + '\n'.join(
            f"- {r['workload']}: " + ', '.join(f"{t:.3f}" for t in r['runs']) + " s" for r in rows))
    for r in rows:
        if r.get('mfu') is not None:
            print(f"| {r['workload']} bf16 MFU on {r['device']} | {100 * r['mfu']:.1f} % "
                  f"({r['tflops']:.0f} TFLOP/s, {r['tokens_per_s']:.0f} tok/s) |")


if __name__ == '__main__':
    main()
