#!/usr/bin/env python3
"""Data-parallel scaling on this machine: training steps/s with 1 and 2 ranks, and the
share of step time spent blocked in communication.

    /usr/bin/python3 bench/ddp_bench.py [--liondg build/liondg] [--reps 3] [--steps 30]
                                        [--models densenet-ds,resnet-ds] [--out bench/results]

Per model, alternating, `--reps` times (fresh processes each):
  1 rank  x all cores   `liondg train --threads C`
  1 rank  x 1 core      `liondg train --threads 1`           (per-core reference)
  2 ranks x C/2 cores   `liondg launch --nproc 2 -- train`   (global batch B, B/2 per rank)
on synthetic 32x32x3 data, 10 classes, global batch --batch-size, no evaluation and no
gradient diagnostics. Step time = median of metrics.csv's step_seconds after the first 5
steps; communication share = summary.json's comm_seconds / train_seconds of rank 0 (time
blocked in collectives: the gradient all-reduce not hidden behind backward, plus the
per-step metric reduction). Writes OUT/ddp.json and OUT/ddp.md.
"""
import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
WARMUP_STEPS = 5


def train(a, model, out_dir, threads, nproc):
    cmd = [a.liondg]
    if nproc > 1:
        cmd += ["launch", "--nproc", str(nproc), "--"]
    cmd += ["train", "--model", model, "--dataset", "synthetic", "--synthetic-train-size", "4096",
            "--synthetic-classes", "10", "--batch-size", str(a.batch_size), "--steps", str(a.steps),
            "--eval-every", "0", "--grad-every", "0", "--threads", str(threads), "--quiet", "--no-save-model",
            "--out", out_dir]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    rows = list(csv.DictReader(open(os.path.join(out_dir, "metrics.csv"))))
    step_s = statistics.median(float(r["step_seconds"]) for r in rows[WARMUP_STEPS:])
    s = json.load(open(os.path.join(out_dir, "summary.json")))
    return step_s, s["comm_seconds"] / s["train_seconds"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--liondg", default=os.path.join(HERE, "..", "build", "liondg"))
    p.add_argument("--models", default="densenet-ds,resnet-ds")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--cores", type=int, default=os.cpu_count())
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    a = p.parse_args()
    configs = [("1 rank x %d threads" % a.cores, a.cores, 1), ("1 rank x 1 thread", 1, 1),
               ("2 ranks x %d thread(s)" % max(1, a.cores // 2), max(1, a.cores // 2), 2)]
    results = {"machine": {"platform": platform.platform(), "cores": a.cores}, "settings": vars(a), "models": {}}
    for model in a.models.split(","):
        times = {c[0]: [] for c in configs}
        comm = {c[0]: [] for c in configs}
        with tempfile.TemporaryDirectory() as tmp:
            for rep in range(a.reps):
                for i, (label, threads, nproc) in enumerate(configs):
                    step_s, share = train(a, model, os.path.join(tmp, f"r{rep}c{i}"), threads, nproc)
                    times[label].append(step_s)
                    comm[label].append(share)
                    print(f"  {model} rep {rep + 1}/{a.reps} {label}: {step_s:.4f} s/step, comm {100 * share:.1f}%",
                          flush=True)
        base = statistics.median(times[configs[0][0]])
        entry = {}
        for label, threads, nproc in configs:
            t = statistics.median(times[label])
            entry[label] = {"ranks": nproc, "threads_per_rank": threads, "median_step_s": t, "steps_per_s": 1 / t,
                            "speedup_vs_1_rank_all_cores": base / t, "comm_share": statistics.median(comm[label]),
                            "reps_s": times[label]}
        results["models"][model] = entry
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "ddp.json"), "w") as f:
        json.dump(results, f, indent=2)
    lines = [f"# Data-parallel scaling, global batch {a.batch_size}, {a.cores} cores", "",
             f"Machine: {platform.platform()}. Medians of {a.reps} alternating runs of {a.steps} steps "
             f"(step time: median after the first {WARMUP_STEPS} steps). Communication share = time rank 0 "
             "spent blocked in collectives / training time.", "",
             "| model | configuration | s/step | steps/s | vs 1 rank, all cores | communication share |",
             "|---|---|---|---|---|---|"]
    for model, entry in results["models"].items():
        for label, e in entry.items():
            lines.append(f"| {model} | {label} | {e['median_step_s']:.4f} | {e['steps_per_s']:.2f} | "
                         f"{e['speedup_vs_1_rank_all_cores']:.2f}x | {100 * e['comm_share']:.1f}% |")
    with open(os.path.join(a.out, "ddp.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
