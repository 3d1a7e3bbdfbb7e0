#!/usr/bin/env python3
"""Before/after: the training step (or evaluation) of two liondg builds, side by side on one machine.

Runs `liondg bench step --json` (`bench eval` with --what eval) of build A (e.g. a copy of the binary before a change) and
build B (after it) in alternating fresh processes, --reps pairs per model and mode, and
prints the median of each side's per-process medians and the ratio B / A, with the smallest
and largest ratio of one pair (the two processes of a pair ran under nearly the same load).

  cp build/liondg /tmp/liondg-before      # before the change
  ... change, rebuild ...
  /usr/bin/python3 bench/ab_builds.py --a /tmp/liondg-before --b build/liondg --bf16-too
"""
import argparse
import json
import os
import statistics

from run_bench import run

HERE = os.path.dirname(os.path.abspath(__file__))


def step_seconds(binary, model, bf16, a):
    cmd = [binary, "bench", a.what, "--model", model, "--batch-size", str(a.batch_size), "--steps", str(a.steps),
           "--threads", str(a.threads), "--json"] + (["--bf16"] if bf16 else [])
    return run(cmd)["median_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, help="liondg binary before the change")
    p.add_argument("--b", default=os.path.join(HERE, "..", "build", "liondg"), help="liondg binary after it")
    p.add_argument("--models", default="densenet-ds,resnet-ds")
    p.add_argument("--what", choices=("step", "eval"), default="step",
                   help="time the training step (default) or one evaluation batch in inference mode")
    p.add_argument("--bf16-too", action="store_true", help="also DenseNet-DS with --bf16")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args()
    for binary in (a.a, a.b):
        if not os.access(binary, os.X_OK):
            raise SystemExit(f"ab_builds.py: '{binary}' is not an executable liondg binary")
    cases = [(m, False) for m in a.models.split(",")]
    if a.bf16_too and a.what == "eval":
        raise SystemExit("ab_builds.py: --bf16-too times training steps; bf16 is a training mode")
    if a.bf16_too:
        cases.append(("densenet-ds", True))
    results = []
    print(f"| model | mode | A median | B median | B / A | pair ratios |\n|---|---|---|---|---|---|")
    for model, bf16 in cases:
        ta, tb = [], []
        for _ in range(a.reps):
            ta.append(step_seconds(a.a, model, bf16, a))
            tb.append(step_seconds(a.b, model, bf16, a))
        pairs = [y / x for x, y in zip(ta, tb)]
        ma, mb = statistics.median(ta), statistics.median(tb)
        mode = "bf16" if bf16 else "float32"
        results.append({"model": model, "mode": mode, "a_s": ta, "b_s": tb, "a_median_s": ma, "b_median_s": mb,
                        "ratio": mb / ma, "pair_ratios": pairs})
        print(f"| {model} | {mode} | {ma:.4f} s | {mb:.4f} s | {mb / ma:.3f}x | "
              f"{min(pairs):.3f}-{max(pairs):.3f}x |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"a": a.a, "b": a.b, "what": a.what, "threads": a.threads, "batch_size": a.batch_size, "reps": a.reps,
                       "steps": a.steps, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
