"""Where a sampling step's time goes: python benchmarks/profile_sampling.py [THREADS]

The benchmark's sampling workload (256 tokens, width 192, 4 layers, 4 heads, batch 4): tokens/s, then torch.profiler's
ATen calls by self time, then one of the step's products (4 x 192 @ 192 x 576), one block's attention and its GELU,
each alone, hot in cache.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from bench import prior_cfg  # noqa: E402  (the sampling workload's prior, as bench.py builds it)
import videogpt as vg  # noqa: E402

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
torch.manual_seed(0)
model = vg.VideoGPT(prior_cfg((4, 8, 8))).eval()  # 256 tokens
model.sample(4)  # warm-up
t0 = time.perf_counter()
model.sample(4)
dt = time.perf_counter() - t0
print(f"{4 * 256 / dt:.0f} tok/s, {dt / 256 * 1e3:.2f} ms per step, {torch.get_num_threads()} threads")
with profile(activities=[ProfilerActivity.CPU]) as prof:
    model.sample(4)
events = prof.key_averages()
print(events.table(sort_by='self_cpu_time_total', row_limit=12))
print(f"ATen calls per step: {sum(e.count for e in events if e.key.startswith('aten::')) / 256:.0f}")
x, w, b = torch.randn(4, 192), torch.randn(576, 192), torch.randn(576)
q, kv, h = torch.randn(4, 4, 1, 48), torch.randn(4, 4, 128, 48), torch.randn(4, 768)
for what, fn in (("F.linear 4 x 192 @ 192 x 576", lambda: F.linear(x, w, b)),
                 ("attention of 4 x 4 heads over a 128-long cache", lambda: F.scaled_dot_product_attention(q, kv, kv)),
                 ("GELU on 4 x 768", lambda: F.gelu(h))):
    for _ in range(50):
        fn()
    t0 = time.perf_counter()
    for _ in range(2000):
        fn()
    print(f"{what} alone: {(time.perf_counter() - t0) / 2000 * 1e6:.1f} us")
