#!/usr/bin/env python3
"""What a bf16 mode could gain on this CPU: every convolution of DenseNet-DS (the shapes of one
training step at batch 128 on 32x32x3), forward + backward (input and weight gradients) in
fp32 and in bf16, channels-last, with PyTorch eager (Debian's python3-torch, the libtorch of
the C++ build, oneDNN underneath).

    /usr/bin/python3 bench/bf16_probe.py [--threads 2] [--reps 5] [--iters 5] [--out bench/results]

fp32 and bf16 alternate per shape, `--reps` times, each the median of `--iters` timed
iterations after one warm-up; the table gives the medians and the ratio bf16 / fp32 per shape,
and the sum over the step's convolutions (each shape counted as often as the model has it). The
casts a bf16 mode would add (activations and gradients to and from bf16) are not included: the
sum is an upper bound of what the convolutions could gain. The script runs itself with glibc's
mmap disabled and heap trimming off (GLIBC_TUNABLES=glibc.malloc.mmap_max=0:
glibc.malloc.trim_threshold=1073741824), so that freed blocks are reused and the times are those
of the kernels, not of the page faults of freshly mapped fp32 tensors (liondg's caching allocator
avoids those too). Writes OUT/bf16_probe.{json,md}.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

NO_MMAP_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1073741824"
if NO_MMAP_TUNABLES not in os.environ.get("GLIBC_TUNABLES", ""):  # before torch allocates anything
    tunables = ":".join(t for t in (os.environ.get("GLIBC_TUNABLES", ""), NO_MMAP_TUNABLES) if t)
    os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, GLIBC_TUNABLES=tunables))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def densenet_ds_convs(growth=12, stem=24, layers=(6, 6, 6), compression=0.5, size=32, cin=3):
    """(name, c_in, c_out, kernel, resolution) of every convolution, in the order of the forward
    pass (the transitions' 1x1 convolution at the pooled resolution, as liondg runs it)."""
    convs = [("stem", cin, stem, 3, size)]
    c, res = stem, size
    for b, n in enumerate(layers):
        for i in range(n):
            convs.append((f"block{b + 1}.layer{i}", c, growth, 3, res))
            c += growth
        if b + 1 < len(layers):
            out = int(c * compression)
            res //= 2
            convs.append((f"transition{b + 1}", c, out, 1, res))
            c = out
    return convs


def time_conv(x, w, pad, iters):
    """Median seconds of forward + backward (grad of input and weight) of one convolution."""
    times = []
    for i in range(iters + 1):
        xi = x.detach().requires_grad_(True)
        wi = w.detach().requires_grad_(True)
        t0 = time.perf_counter()
        y = F.conv2d(xi, wi, padding=pad)
        y.backward(torch.ones_like(y))
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    flags = open("/proc/cpuinfo").read()
    bf16_hw = "avx512_bf16" in flags or "amx_bf16" in flags
    rows = []
    for name, cin, cout, k, res in densenet_ds_convs():
        x = torch.randn(a.batch_size, cin, res, res).contiguous(memory_format=torch.channels_last)
        w = (torch.randn(cout, cin, k, k) * 0.1).contiguous(memory_format=torch.channels_last)
        xb, wb = x.bfloat16(), w.bfloat16()
        fp32, bf16 = [], []
        for _ in range(a.reps):  # alternate, so drifts in machine load hit both equally
            fp32.append(time_conv(x, w, k // 2, a.iters))
            bf16.append(time_conv(xb, wb, k // 2, a.iters))
        r = {"name": name, "c_in": cin, "c_out": cout, "kernel": k, "resolution": res,
             "fp32_s": statistics.median(fp32), "bf16_s": statistics.median(bf16)}
        r["ratio"] = r["bf16_s"] / r["fp32_s"]
        rows.append(r)
        print(f"  {name}: {cin}->{cout} k{k} @{res}: fp32 {1e3 * r['fp32_s']:.1f} ms, bf16 {1e3 * r['bf16_s']:.1f} ms "
              f"({r['ratio']:.2f}x)", flush=True)
    total32 = sum(r["fp32_s"] for r in rows)
    total16 = sum(r["bf16_s"] for r in rows)
    result = {"torch": torch.__version__, "threads": a.threads, "batch_size": a.batch_size,
              "platform": platform.platform(), "cpu_has_bf16_instructions": bf16_hw, "reps": a.reps,
              "iters": a.iters, "convolutions": rows, "sum_fp32_s": total32, "sum_bf16_s": total16,
              "sum_ratio": total16 / total32}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "bf16_probe.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [f"# bf16 vs fp32 convolutions of DenseNet-DS (PyTorch {torch.__version__}, {a.threads} threads, "
             f"batch {a.batch_size}, channels-last)", "",
             f"Machine: {platform.platform()}; AVX512_BF16/AMX: {'yes' if bf16_hw else 'no'}. Forward + backward "
             f"(input and weight gradients) of each convolution; medians of {a.reps} alternating repetitions of "
             f"{a.iters} iterations, glibc mmap and heap trimming disabled (freed blocks reused). Casts to and from bf16 not included.", "",
             "| convolution | c_in -> c_out | kernel | resolution | fp32 | bf16 | bf16 / fp32 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['c_in']} -> {r['c_out']} | {r['kernel']}x{r['kernel']} | {r['resolution']} | "
                     f"{1e3 * r['fp32_s']:.1f} ms | {1e3 * r['bf16_s']:.1f} ms | {r['ratio']:.2f}x |")
    lines += ["", f"All convolutions of one step: fp32 {1e3 * total32:.0f} ms, bf16 {1e3 * total16:.0f} ms "
              f"({total16 / total32:.2f}x)."]
    with open(os.path.join(a.out, "bf16_probe.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
