#!/usr/bin/env python3
"""Side-by-side benchmark of liondg against PyTorch eager (bench/peer.py) on this machine.

    /usr/bin/python3 bench/run_bench.py [--liondg build/liondg] [--reps 5] [--steps 10] [--threads 2]
                                        [--models densenet-ds,resnet-ds] [--out bench/results]

For every model it alternates `liondg bench step` and `peer.py step` (then the same for eval)
`--reps` times, each a fresh process timing `--steps` iterations after warm-up, and reports
medians of the per-process medians, the ratio ours/peer, the peak resident memory of each
process (getrusage of the child), the training step's achieved GFLOP/s against the machine's
fp32 peak (how the peak is derived is printed), and the set-up cost of LSUV and GradInit as a
fraction of a 3000-step run. Writes OUT/latest.json and OUT/latest.md.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "peer.py")


def run(cmd, env=None):
    """Runs cmd and returns the JSON object on the last line of its stdout."""
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_rss(cmd, env=None):
    """Like run() but also returns the child's own peak RSS (MiB) and the kernel's share of its
    CPU time (system / (user + system): page faults, mostly), via os.wait4."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.dup2(w, 1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.execvpe(cmd[0], cmd, env or os.environ)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    _, status, usage = os.wait4(pid, 0)
    if status != 0:
        raise SystemExit(f"command failed ({status}): {' '.join(cmd)}")
    text = b"".join(chunks).decode()
    cpu = usage.ru_utime + usage.ru_stime
    return json.loads(text.strip().splitlines()[-1]), usage.ru_maxrss / 1024.0, usage.ru_stime / cpu if cpu > 0 else 0.0


def cpu_peak():
    """fp32 peak of this machine from /proc/cpuinfo: cores x clock x FLOP/cycle/core."""
    info = open("/proc/cpuinfo").read()
    flags = set()
    mhz, vendor, model, family = 0.0, "", "", 0
    for line in info.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
        elif line.startswith("cpu MHz"):
            mhz = max(mhz, float(line.split(":", 1)[1]))
        elif line.startswith("vendor_id"):
            vendor = line.split(":", 1)[1].strip()
        elif line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        elif line.startswith("cpu family"):
            family = int(line.split(":", 1)[1])
    cores = os.cpu_count()
    if "avx512f" in flags and vendor == "GenuineIntel":
        per_cycle, why = 64, "AVX-512: 2 FMA units x 16 fp32 lanes x 2 FLOP (Intel server cores)"
    elif "avx512f" in flags and family >= 26 and "EPYC" in model:
        per_cycle, why = 64, ("AVX-512 on AMD Zen 5 server cores (cpu family 26): 2 FMA pipes x 16 fp32 lanes "
                              "(512-bit datapath) x 2 FLOP")
    elif "avx512f" in flags:
        per_cycle, why = 32, "AVX-512 on AMD Zen 4: 2 FMA pipes x 8 fp32 lanes (256-bit datapath) x 2 FLOP"
    elif "fma" in flags and "avx2" in flags:
        per_cycle, why = 32, "AVX2+FMA: 2 FMA units x 8 fp32 lanes x 2 FLOP"
    else:
        per_cycle, why = 8, "SSE: 4 lanes x 2 ops"
    peak = cores * mhz / 1000.0 * per_cycle
    text = (f"{cores} cores x {mhz / 1000:.3f} GHz (cpu MHz of /proc/cpuinfo, {vendor} {model} family {family}; "
            f"a virtual machine reports the nominal clock, and boost clocks make the true peak higher) x "
            f"{per_cycle} FLOP/cycle ({why}) = {peak:.1f} GFLOP/s")
    return peak, text


def median(xs):
    return statistics.median(xs)


def e2e(a, model, env):
    """A short real run end to end (data loading, flips, training, evaluation every 25 steps on 2000
    test images): `liondg train` on the archive (cold: decoding it; warm: from the decoded cache)
    vs peer.py e2e (PIL decoding in 2 DataLoader workers). Wall time of the whole process."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache_env = dict(env, LIONDG_CACHE_DIR=os.path.join(tmp, "cache"))
        for label in ("cold", "warm"):
            t0 = time.perf_counter()
            subprocess.run([a.liondg, "train", "--model", model, "--init", "lion-dg", "--dataset", "cifar10",
                            "--data", a.data, "--steps", str(a.e2e_steps), "--eval-every", "25", "--eval-limit", "2000",
                            "--grad-every", "0", "--threads", str(a.threads), "--quiet", "--no-save-model",
                            "--out", os.path.join(tmp, label)], check=True, env=cache_env, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            out["ours_" + label + "_wall_s"] = wall
            out["ours_" + label + "_images_per_s"] = a.e2e_steps * a.batch_size / wall
        r = run([a.python, PEER, "e2e", "--model", model, "--data", a.data, "--steps", str(a.e2e_steps),
                 "--eval-every", "25", "--eval-images", "2000", "--threads", str(a.threads), "--json"], env)
        out["peer_wall_s"] = r["wall_s"]
        out["peer_images_per_s"] = r["train_images_per_s"]
    out["steps"] = a.e2e_steps
    print(f"  {model} e2e: ours {out['ours_cold_wall_s']:.1f} s cold / {out['ours_warm_wall_s']:.1f} s warm, "
          f"peer {out['peer_wall_s']:.1f} s", flush=True)
    return out


def source_provenance(a):
    """Date, the commit of the source tree the benchmark ran from (and whether it had
    uncommitted changes) and the command line, for the report's first lines."""
    def git(*args):
        r = subprocess.run(["git", "-C", os.path.join(HERE, ".."), *args], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "commit": git("rev-parse", "--short", "HEAD") or "unknown (not a git checkout)",
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "command": " ".join(["/usr/bin/python3", "bench/run_bench.py", *sys.argv[1:]])}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--liondg", default=os.path.join(HERE, "..", "build", "liondg"))
    p.add_argument("--python", default="/usr/bin/python3", help="Python with Debian's python3-torch")
    p.add_argument("--models", default="densenet-ds,resnet-ds")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--no-init-cost", action="store_true", help="skip the LSUV/GradInit set-up cost runs")
    p.add_argument("--gradinit-iters", type=int, default=390, help="GradInit iterations of the set-up cost run")
    p.add_argument("--tuned-peer", action="store_true",
                   help="also time the peer with liondg's malloc settings (GLIBC_TUNABLES), to separate the "
                        "allocator's share of the gain from the rest")
    p.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "cifar10-jpeg.tar.gz"),
                   help="image-folder archive for the end-to-end run ('' to skip it)")
    p.add_argument("--e2e-steps", type=int, default=50)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    a = p.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    common = ["--batch-size", str(a.batch_size), "--steps", str(a.steps), "--warmup", str(a.warmup),
              "--threads", str(a.threads), "--json"]
    peak, peak_text = cpu_peak()
    provenance = source_provenance(a)
    torch_version = run([a.python, PEER, "params", "--json"])["torch"]
    results = {"machine": {"cpu_peak_gflops": peak, "cpu_peak_derivation": peak_text, "python_torch": torch_version,
                           "platform": platform.platform(), "threads": a.threads},
               "provenance": provenance, "settings": vars(a), "models": {}}
    print(f"peak: {peak_text}", flush=True)
    for model in a.models.split(","):
        flops = run([a.python, PEER, "flops", "--model", model, "--json"])["forward_flops_per_image"]
        entry = {"forward_flops_per_image": flops}
        for what in ("step", "eval"):
            ours, peer, ours_rss, peer_rss, ours_sys, peer_sys, tuned = [], [], [], [], [], [], []
            tuned_env = dict(env, GLIBC_TUNABLES="glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824")
            for rep in range(a.reps):  # alternate, so drifts in machine load hit both equally
                r, rss, sys_share = run_rss([a.liondg, "bench", what, "--model", model] + common, env)
                ours.append(r["median_s"])
                ours_rss.append(rss)
                ours_sys.append(sys_share)
                r, rss, sys_share = run_rss([a.python, PEER, what, "--model", model] + common, env)
                peer.append(r["median_s"])
                peer_rss.append(rss)
                peer_sys.append(sys_share)
                if a.tuned_peer:
                    tuned.append(run([a.python, PEER, what, "--model", model] + common, tuned_env)["median_s"])
                print(f"  {model} {what} rep {rep + 1}/{a.reps}: ours {ours[-1]:.4f} s, peer {peer[-1]:.4f} s",
                      flush=True)
            # Each alternating pair ran under nearly the same machine load: the spread of the per-pair
            # ratios shows how much of the headline ratio is noise.
            pair_ratios = [o / q for o, q in zip(ours, peer)]
            e = {"ours_median_s": median(ours), "peer_median_s": median(peer), "ratio": median(ours) / median(peer),
                 "pair_ratio_min": min(pair_ratios), "pair_ratio_max": max(pair_ratios),
                 "ours_reps_s": ours, "peer_reps_s": peer,
                 "ours_peak_rss_mib": max(ours_rss), "peer_peak_rss_mib": max(peer_rss),
                 "ours_kernel_share": median(ours_sys), "peer_kernel_share": median(peer_sys)}
            if tuned:
                e["peer_malloc_tuned_median_s"] = median(tuned)
                e["ratio_vs_malloc_tuned_peer"] = median(ours) / median(tuned)
            if what == "step":
                train_flops = 3 * flops * a.batch_size  # forward + backward (input and weight gradients)
                e["ours_gflops"] = train_flops / e["ours_median_s"] / 1e9
                e["peer_gflops"] = train_flops / e["peer_median_s"] / 1e9
                e["ours_fraction_of_peak"] = e["ours_gflops"] / peak
            else:
                e["ours_images_per_s"] = a.batch_size / e["ours_median_s"]
                e["peer_images_per_s"] = a.batch_size / e["peer_median_s"]
            entry[what] = e
        if not a.no_init_cost:
            entry["init_cost"] = {}
            with tempfile.TemporaryDirectory() as tmp:
                for init in ("lsuv", "gradinit"):
                    out_dir = os.path.join(tmp, init)
                    subprocess.run([a.liondg, "train", "--model", model, "--init", init, "--dataset", "synthetic",
                                    "--synthetic-train-size", "2048", "--steps", "1", "--eval-every", "0",
                                    "--grad-every", "0", "--threads", str(a.threads), "--quiet", "--no-save-model",
                                    "--gradinit-iters", str(a.gradinit_iters),
                                    "--out", out_dir], check=True, env=env, stdout=subprocess.DEVNULL)
                    s = json.load(open(os.path.join(out_dir, "summary.json")))
                    run_s = 3000 * entry["step"]["ours_median_s"]
                    entry["init_cost"][init] = {"seconds": s["init_seconds"], "fraction_of_3000_steps": s["init_seconds"] / run_s}
                    if init == "gradinit":
                        entry["init_cost"][init]["iterations"] = a.gradinit_iters
        if a.data and os.path.exists(a.data):
            entry["e2e"] = e2e(a, model, env)
        results["models"][model] = entry

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "latest.json"), "w") as f:
        json.dump(results, f, indent=2)
    lines = [f"# liondg vs PyTorch eager ({torch_version}), {a.threads} threads, batch {a.batch_size}", "",
             f"Measured on {provenance['date']} from commit {provenance['commit']}"
             f"{' with uncommitted changes' if provenance['dirty'] else ''}. Command: `{provenance['command']}`.", "",
             f"Machine: {platform.platform()}; fp32 peak {peak_text}.", "",
             f"Medians of {a.reps} alternating process pairs, each the median of {a.steps} steps after "
             f"{a.warmup} warm-up steps. Ratio = ours / peer (lower is better for ours); pair ratios = the "
             f"smallest and largest ratio of one alternating pair; kernel time = the share of each process's CPU "
             f"time spent in the kernel (system time; page faults, mostly), whole process, median over the pairs.", "",
             "| model | what | liondg | PyTorch eager | ratio | pair ratios | liondg peak RSS | PyTorch peak RSS | "
             "kernel time liondg / PyTorch | liondg GFLOP/s (of peak) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for model, e in results["models"].items():
        for what in ("step", "eval"):
            x = e[what]
            extra = (f"{x['ours_gflops']:.1f} ({100 * x['ours_fraction_of_peak']:.0f}%)" if what == "step"
                     else f"{x['ours_images_per_s']:.0f} vs {x['peer_images_per_s']:.0f} images/s")
            lines.append(f"| {model} | {what} | {x['ours_median_s']:.4f} s | {x['peer_median_s']:.4f} s | "
                         f"{x['ratio']:.2f}x | {x['pair_ratio_min']:.2f}-{x['pair_ratio_max']:.2f}x | {x['ours_peak_rss_mib']:.0f} MiB | {x['peer_peak_rss_mib']:.0f} MiB | "
                         f"{100 * x['ours_kernel_share']:.0f}% / {100 * x['peer_kernel_share']:.0f}% | {extra} |")
    if a.tuned_peer:
        lines += ["", "Against PyTorch eager run with the same glibc malloc settings as liondg "
                  "(GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824):", ""]
        for model, e in results["models"].items():
            for what in ("step", "eval"):
                x = e[what]
                lines.append(f"- {model} {what}: peer {x['peer_malloc_tuned_median_s']:.4f} s, "
                             f"ratio {x['ratio_vs_malloc_tuned_peer']:.2f}x")
    for model, e in results["models"].items():
        if "e2e" in e:
            x = e["e2e"]
            lines.append("")
            lines.append(f"{model} end to end on {os.path.basename(a.data)} ({x['steps']} steps, evaluation every 25 "
                         f"steps on 2000 test images, whole process): liondg {x['ours_cold_wall_s']:.1f} s decoding "
                         f"the archive / {x['ours_warm_wall_s']:.1f} s from the cache, PyTorch + DataLoader "
                         f"{x['peer_wall_s']:.1f} s (ratio {x['ours_warm_wall_s'] / x['peer_wall_s']:.2f}x warm, "
                         f"{x['ours_cold_wall_s'] / x['peer_wall_s']:.2f}x cold)")
    for model, e in results["models"].items():
        for init, c in e.get("init_cost", {}).items():
            lines.append("")
            iters = f" ({c['iterations']} iterations)" if "iterations" in c else ""
            lines.append(f"{model} {init}{iters} set-up: {c['seconds']:.2f} s = "
                         f"{100 * c['fraction_of_3000_steps']:.2f}% of a 3000-step run")
    with open(os.path.join(a.out, "latest.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
