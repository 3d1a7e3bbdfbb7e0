#!/usr/bin/env python3
"""The bf16 mode (`liondg train --bf16`, off by default): what it gains and what it costs.

Speed: `liondg bench step` in float32, the same with --bf16, and PyTorch eager in float32
(peer.py step), alternating fresh processes --reps times, medians of medians.
Accuracy: `liondg train` on CIFAR-10 (or --dataset cifar100) from the archive with and without --bf16, the same
seeds, init and steps (evaluation every --eval-every steps on the first --eval-limit test
images); main-head accuracies and losses, steps to 70% training accuracy, and the largest
difference of the training loss curves.

    /usr/bin/python3 bench/bf16_mode.py [--reps 3] [--steps 6] [--train-steps 1000] [--seeds 42,123]

writes results/bf16_mode.json and results/bf16_mode.md.
"""
import argparse
import csv
import json
import os
import platform
import subprocess
import tempfile

from run_bench import median, run as run_json

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "peer.py")


def native_bf16():
    with open("/proc/cpuinfo") as f:
        return any("avx512_bf16" in line.split() for line in f if line.startswith("flags"))


def speed(a, env):
    common = ["--model", "densenet-ds", "--batch-size", "128", "--steps", str(a.steps), "--warmup", "3",
              "--threads", str(a.threads), "--json"]
    times = {"fp32": [], "bf16": [], "peer": []}
    for rep in range(a.reps):  # alternate, so drifts in machine load hit all three alike
        times["fp32"].append(run_json([a.liondg, "bench", "step"] + common, env)["median_s"])
        times["bf16"].append(run_json([a.liondg, "bench", "step", "--bf16"] + common, env)["median_s"])
        times["peer"].append(run_json([a.python, PEER, "step"] + common, env)["median_s"])
        print(f"  step rep {rep + 1}/{a.reps}: fp32 {times['fp32'][-1]:.4f} s, bf16 {times['bf16'][-1]:.4f} s, "
              f"PyTorch {times['peer'][-1]:.4f} s", flush=True)
    m = {k: median(v) for k, v in times.items()}
    return {"reps_s": times, "median_s": m, "bf16_over_fp32": m["bf16"] / m["fp32"],
            "bf16_over_peer": m["bf16"] / m["peer"], "fp32_over_peer": m["fp32"] / m["peer"],
            "pair_bf16_over_fp32": [b / f for b, f in zip(times["bf16"], times["fp32"])]}


def train_run(a, env, seed, bf16, out_dir):
    cmd = [a.liondg, "train", "--model", "densenet-ds", "--init", a.init, "--dataset", a.dataset, "--data", a.data,
           "--steps", str(a.train_steps), "--eval-every", str(a.eval_every), "--eval-limit", str(a.eval_limit),
           "--grad-every", "0", "--seed", str(seed), "--threads", str(a.threads), "--quiet", "--no-save-model",
           "--out", out_dir] + (["--bf16"] if bf16 else [])
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    summary = json.load(open(os.path.join(out_dir, "summary.json")))
    with open(os.path.join(out_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in rows]
    return {"val_acc": summary["val_acc"], "final_val_loss": summary["final_val"]["main_loss"],
            "final_train_window_acc": summary["final_train_window_acc"],
            "steps_to_target": summary["steps_to_target"], "train_seconds": summary["train_seconds"],
            "losses": losses}


def accuracy(a, env):
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        cache_env = dict(env, LIONDG_CACHE_DIR=os.path.join(tmp, "cache"))
        for seed in [int(s) for s in a.seeds.split(",")]:
            pair = {"seed": seed}
            for label, bf16 in (("fp32", False), ("bf16", True)):
                pair[label] = train_run(a, cache_env, seed, bf16, os.path.join(tmp, f"{label}-{seed}"))
                r = pair[label]
                print(f"  seed {seed} {label}: val acc {r['val_acc']:.4f}, train window acc "
                      f"{r['final_train_window_acc']:.4f}, steps to 70% {r['steps_to_target']}, "
                      f"{r['train_seconds']:.0f} s", flush=True)
            f, b = pair["fp32"]["losses"], pair["bf16"]["losses"]
            pair["max_abs_loss_diff"] = max(abs(x - y) for x, y in zip(f, b))
            # Mean training loss of the last 100 steps: the curves' end, less noisy than one step.
            pair["last100_loss"] = {k: sum(pair[k]["losses"][-100:]) / len(pair[k]["losses"][-100:])
                                    for k in ("fp32", "bf16")}
            for k in ("fp32", "bf16"):
                del pair[k]["losses"]
            runs.append(pair)
    return runs


def reached(step):
    """Steps to 70% as a table cell (the run's summary has null when it never got there)."""
    return "not reached" if step is None else str(step)


def markdown(res):
    """The Markdown table of a result (main()'s JSON); --render-only redraws it from the file."""
    st = res["settings"]
    s = res["speed"]
    lines = [f"# bf16 mode (`--bf16`): DenseNet-DS, batch 128, {st['threads']} threads", "",
             f"Machine: {res['machine']['platform']}; AVX512_BF16: {'yes' if res['machine']['avx512_bf16'] else 'no'}.", "",
             f"Step time, medians of {st['reps']} alternating process triples (each the median of {st['steps']} steps "
             f"after 3 warm-up steps):", "",
             "| liondg float32 | liondg bf16 | PyTorch eager float32 | bf16 / float32 | bf16 / PyTorch | "
             "float32 / PyTorch | per-triple bf16 / float32 |",
             "|---|---|---|---|---|---|---|",
             f"| {s['median_s']['fp32']:.4f} s | {s['median_s']['bf16']:.4f} s | {s['median_s']['peer']:.4f} s | "
             f"{s['bf16_over_fp32']:.2f}x | {s['bf16_over_peer']:.2f}x | {s['fp32_over_peer']:.2f}x | "
             f"{min(s['pair_bf16_over_fp32']):.2f}-{max(s['pair_bf16_over_fp32']):.2f}x |"]
    if "accuracy" in res:
        lines += ["", f"Accuracy effect: `liondg train --model densenet-ds --init {st['init']} "
                  f"--dataset {st.get('dataset', 'cifar10')}` on "
                  f"{os.path.basename(st['data'])}, {st['train_steps']} steps (the paper's AdamW, batch 128, flips), "
                  f"evaluation of the main head on the first {st['eval_limit']} test images at the end; the same "
                  f"seed gives both modes the same initial weights and batches.", "",
                  "| seed | val acc fp32 | val acc bf16 | val loss fp32 | val loss bf16 | train acc (last 50) fp32 | "
                  "bf16 | steps to 70% fp32 | bf16 | mean loss last 100 steps fp32 | bf16 | max per-step loss diff |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["accuracy"]:
            f, b = r["fp32"], r["bf16"]
            lines.append(f"| {r['seed']} | {f['val_acc']:.4f} | {b['val_acc']:.4f} | {f['final_val_loss']:.4f} | "
                         f"{b['final_val_loss']:.4f} | {f['final_train_window_acc']:.4f} | "
                         f"{b['final_train_window_acc']:.4f} | {reached(f['steps_to_target'])} | {reached(b['steps_to_target'])} | "
                         f"{r['last100_loss']['fp32']:.4f} | {r['last100_loss']['bf16']:.4f} | "
                         f"{r['max_abs_loss_diff']:.4f} |")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--liondg", default=os.path.join(HERE, "..", "build", "liondg"))
    p.add_argument("--python", default="/usr/bin/python3", help="Python with Debian's python3-torch")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=6, help="timed steps per bench process")
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"])
    p.add_argument("--data", help="the data set's JPEG archive (default: ../shared/data/DATASET-jpeg.tar.gz)")
    p.add_argument("--train-steps", type=int, default=1000)
    p.add_argument("--seeds", default="42,123")
    p.add_argument("--init", default="lion-dg")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-limit", type=int, default=10000)
    p.add_argument("--no-accuracy", action="store_true", help="speed only")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--render-only", action="store_true",
                   help="measure nothing: redraw OUT/bf16_mode.md from OUT/bf16_mode.json")
    a = p.parse_args()
    if a.data is None:
        a.data = os.path.join(HERE, "..", "..", "shared", "data", f"{a.dataset}-jpeg.tar.gz")
    if a.render_only:
        write_markdown(json.load(open(os.path.join(a.out, "bf16_mode.json"))), a.out)
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    res = {"machine": {"platform": platform.platform(), "threads": a.threads, "avx512_bf16": native_bf16()},
           "settings": vars(a)}
    print(f"AVX512_BF16: {res['machine']['avx512_bf16']}", flush=True)
    res["speed"] = speed(a, env)
    if not a.no_accuracy:
        if not os.path.exists(a.data):
            raise SystemExit(f"bf16_mode.py: --data {a.data}: no such archive ({a.dataset} JPEG tar.gz expected; "
                             f"--no-accuracy skips the accuracy runs)")
        res["accuracy"] = accuracy(a, env)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "bf16_mode.json"), "w") as f:
        json.dump(res, f, indent=2)
    write_markdown(res, a.out)


def write_markdown(res, out):
    lines = markdown(res)
    with open(os.path.join(out, "bf16_mode.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
