"""The benchmarks' command line: options shared by mnist.py and medical.py, and the run they start."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from rerelrp.input_space import INPUT_FILTERS
from rerelrp.prune import MEASURES
from rerelrp.recognize import RECOGNIZERS
from rerelrp.remember import REST_COMPONENTS
from rerelrp.spaces import DETECTOR_SPACES

from benchmarks.backbones import BACKBONES
from benchmarks.methods import LEARNER_DEFAULTS, METHODS, detectors
from benchmarks.protocol import run_all
from benchmarks.reports import environment, markdown_table, plot_heatmaps, plot_results
from benchmarks.stream import Stream


def word_or(word: str, kind: type) -> Callable[[str], object]:
    """An argparse ``type``: the text ``word`` as it is, anything else converted by ``kind`` (``int``, ``float``)."""
    def parse(text: str):
        return text if text == word else kind(text)

    parse.__name__ = f"'{word}' or {kind.__name__}"  # argparse names it in "invalid ... value"
    return parse


#: rerelrp options the command line sets when given: name -> (type or choices, what it does); unset, the learner's
#: default.
#: n_tasks is set apart (it may name the stream's length).
LEARNER_OPTIONS = {
    "n_features": (word_or("auto", int), "units or principal components each rerelrp detector reads (auto: 40 for a "
                                         "task of two classes, 17 for ten)"),
    "n_components": (int, "most Gaussian mixture components per class with --recognizer gaussian (1: one Gaussian "
                          "per class)"),
    "detector_space": (DETECTOR_SPACES, "what rerelrp's Gaussian detectors read: units (the last hidden unit layer's "
                                        "units that vary most), head (principal components of the output layer's "
                                        "input; use it for --backbone resnet18) or layers (principal components of "
                                        "every unit layer's standardized outputs; small networks)"),
    "later_tasks": (word_or("all", int),
                    "tasks after its own whose classes each rerelrp detector keeps, a mixture each; the tasks after "
                    f"those fold into one mixture of at most {REST_COMPONENTS} components per detector, so side memory "
                    "grows linearly with the tasks (all: every task's classes, memory grows with the square of the "
                    "tasks)"),
    "input_weight": (float, "weight of rerelrp's input-space recognizer (class mixtures of the inputs through one "
                            "fixed map, see --input-filters) added to its detector chain; 0: none (docs: Benchmarks, "
                            "Recognition); the learner's default 1"),
    "input_filters": (INPUT_FILTERS, "the filters of rerelrp's input-space map: patches (k-means centroids of the "
                                     "first task's whitened 5 x 5 patches; the learner's default) or random (seeded "
                                     "normal weights)"),
    "min_keep": (float, "fraction of each layer every rerelrp task keeps (0: the paper's pruning)"),
    "acc_drop": (float, "rerelrp's pruning threshold, in points of validation accuracy"),
    "drop_confidence": (float, "confidence of rerelrp's paired test that a pruning costs more than --acc-drop (0.5: "
                               "the raw accuracy difference)"),
    "drop_measure": (MEASURES,
                     "what rerelrp's pruning threshold compares per validation image: accuracy (right or wrong), "
                     "probability (of the true class) or auto (accuracy where --acc-drop points of the task's "
                     "validation images are at least 20 images, probability below)"),
    "prune_rounds": (int, "rounds of relevance, pruning and retraining per rerelrp task"),
    "retrain_epochs": (int, "epochs retraining the surviving units after each pruning round (0: no retraining, "
                            "the paper's pruning)"),
    "grow": (word_or("auto", float),
             "fraction of each layer's initial width that every rerelrp task after the first finds free, the layer "
             "grown by new units where fewer are (0: the network never grows; auto: 0.25 where the model can grow)"),
}

#: ``--preset``: the rerelrp options each preset sets unless given on the command line. ``defaults``: none (the
#: learner's defaults, what ``ReReLRP(model, epochs=E, random_state=s)`` does); ``tuned``: the options every result
#: before the learner chose its own used (a budget for the stream's length, no growth, the last hidden layer's
#: units as detector space, no input-space recognizer).
PRESETS = {"defaults": {}, "tuned": {"n_tasks": "stream", "grow": 0.0, "detector_space": "units", "n_features": 48,
                                     "later_tasks": "all", "input_weight": 0.0}}


def add_threads_option(p: argparse.ArgumentParser) -> None:
    """``--threads``: torch's intra-op threads for the run (see :func:`set_threads`)."""
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads; 0: one per CPU this process may use (os.sched_getaffinity). 1 is "
                        "the default because these models are small: on 2 idle cores 2 threads fit the small CNN "
                        "1.2x faster and the digits MLP 1.3x slower, while on cores busy with other jobs 2 threads "
                        "were 1.3x (small CNN) to 24x (digits MLP) slower than 1 (docs: Benchmarks, Speed and memory)")


def set_threads(threads: int) -> int:
    """Set torch's intra-op threads (0: one per CPU this process may use); returns the number set."""
    if threads < 0:
        raise SystemExit(f"error: --threads must be >= 0, got {threads}")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = threads or usable
    torch.set_num_threads(n)
    return n


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults in --help, except None: those options say in their own help what they default to."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


def parser(script: str, description: str, default_epochs: int, quick_epochs: int,
           default_backbone: str) -> argparse.ArgumentParser:
    """The options mnist.py and medical.py share (``script``: the file's name, as usage and results.json name it;
    ``default_backbone``: which backbone the script uses when ``--backbone`` is not given, as --help says it);
    each script adds its own."""
    p = argparse.ArgumentParser(prog=script, description=description, formatter_class=HelpFormatter)
    p.set_defaults(script=script)
    p.add_argument("--data-root", default=None,
                   help="folder with the data files (mnist/, medmnist/); default: $RERELRP_DATA, else the "
                        "data library's own default folder")
    p.add_argument("--out", default=None, help="folder for results.json, results.md and the PNG plots "
                                               "(default: results/<benchmark>)")
    p.add_argument("--backbone", default=None, choices=list(BACKBONES),
                   help="the network every method trains (the same initial weights for all): small-cnn (two "
                        "convolutions and a dense layer, 176 units), resnet18 (torchvision's ResNet-18 in MedMNIST's "
                        "28x28 variant, 4,800 units), vgg11 (torchvision's VGG-11 for 28x28 inputs, 3,776 units), "
                        "mlp-400 (RNF's MLP: the image flattened, two dense layers of 400 units, 800 units); default: "
                        + default_backbone)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds; each runs every method once")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"training epochs per task for every method (default {default_epochs}; {quick_epochs} with --quick)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size for every method")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate for every method")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                   help=f"methods to run, from: {', '.join(METHODS)}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--tune", action="store_true",
                   help="pick EWC's lambda and LwF's alpha on the validation data (3 extra runs each) instead of "
                        "the literature defaults")
    p.add_argument("--download", action="store_true", help="let the data library download missing files")
    p.add_argument("--quick", action="store_true",
                   help="a reduced run for CI (a few hundred samples per task, few epochs): checks the pipeline, "
                        "its numbers mean little")
    p.add_argument("--recognizer", default="gaussian", choices=RECOGNIZERS,
                   help="rerelrp's task recognizer: gaussian (class-conditional Gaussians of activations through "
                        "the subnetworks, the default) or paper (forests on relevance vectors, as published)")
    p.add_argument("--detector", default=None, choices=list(detectors()),
                   help="with --recognizer paper, the detectors: default (a forest of 100 trees of depth 12, used "
                        "when not given), paper-forest (the paper's forest: 300 trees of depth 40) or hgb "
                        "(scikit-learn's histogram gradient boosting)")
    for name, (kind, what) in LEARNER_OPTIONS.items():
        default = LEARNER_DEFAULTS[name]
        shown = "a tenth of --epochs, at least 1" if default is None else default
        typed = {"type": str, "choices": kind} if isinstance(kind, tuple) else {"type": kind}
        p.add_argument("--" + name.replace("_", "-"), **typed, default=None,
                       help=f"{what} (default: the learner's, {shown})")
    p.add_argument("--n-tasks", type=word_or("stream", int), default=None,
                   help="tasks rerelrp expects, for its budget per task (each task keeps at most "
                        "free units // (tasks left + 1)); stream: the stream's number of tasks; 0 or unset: none, "
                        "an open-ended stream (each task keeps at most a quarter of the free units), unless --preset "
                        "sets it")
    p.add_argument("--preset", default="defaults", choices=list(PRESETS),
                   help="rerelrp's options where not given: defaults (the learner's own: ReReLRP(model, epochs=E, "
                        "random_state=s) and nothing more) or tuned (--n-tasks stream --grow 0 --detector-space units "
                        "--n-features 48 --later-tasks all --input-weight 0, the settings of the results measured "
                        "before the learner chose its own)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_threads_option(p)
    return p


def learner_options(args: argparse.Namespace, stream_length: int) -> dict:
    """The rerelrp options of the command line ``args``: those given, then ``--preset``'s for the others;
    ``n_tasks`` ``"stream"`` is ``stream_length``, 0 is None (an open-ended stream); ``later_tasks`` ``"all"`` is
    None."""
    names = [*LEARNER_OPTIONS, "n_tasks"]
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return preset_options(args.preset, stream_length, given)


def preset_options(preset: str, stream_length: int, given: dict | None = None) -> dict:
    """The rerelrp options of ``--preset`` ``preset`` with the options ``given`` over them; ``n_tasks``
    ``"stream"`` is ``stream_length``, 0 is None (an open-ended stream); ``later_tasks`` ``"all"`` is None."""
    options = {**PRESETS[preset], **(given or {})}
    if "n_tasks" in options:
        options["n_tasks"] = stream_length if options["n_tasks"] == "stream" else options["n_tasks"] or None
    if options.get("later_tasks") == "all":
        options["later_tasks"] = None
    return options


def main(args: argparse.Namespace, stream_fn: Callable[[argparse.Namespace], Stream],
         model_fn: Callable[[Stream, str], nn.Module], default_epochs: int, quick_epochs: int, quick_per_task: int) -> int:
    """Run every method on the stream, write JSON/Markdown/PNGs to --out, print the table and the wall time.

    ``model_fn(stream, args.backbone)`` builds the network; the script has set ``args.backbone`` to its default
    when the option was not given; ``args.script`` (set by :func:`parser`) is its file's name, results.json's
    ``config.script``, which ``check_results.py`` re-runs."""
    wall = time.perf_counter()
    set_threads(args.threads)
    try:
        stream = stream_fn(args)
    except FileNotFoundError as error:
        print(f"error: {error}; name the data folder with --data-root DIR or the environment variable RERELRP_DATA "
              f"(a folder holding mnist/ and medmnist/), or pass --download where there is internet", file=sys.stderr)
        return 2
    epochs = args.epochs or (quick_epochs if args.quick else default_epochs)
    if args.quick:
        stream = stream.subsample(quick_per_task, seed=0)
    out = Path(args.out or Path("results") / stream.name.lower().replace(" ", "-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"{stream.name}: {len(stream.tasks)} tasks {stream.task_names}, classes {stream.tasks}; "
          f"{sum(len(y) for _, y in stream.train)} training images; backbone {args.backbone}; {epochs} epochs; "
          f"seeds {args.seeds}; "
          f"device {args.device}" + (f"\n{stream.note}" if stream.note else ""), flush=True)
    run = dict(epochs=epochs, device=args.device, batch_size=args.batch_size, lr=args.lr,
               progress=not args.no_progress, recognizer=args.recognizer, detector=args.detector or "default",
               options=learner_options(args, len(stream.tasks)))
    results, learner = run_all(stream, lambda: model_fn(stream, args.backbone), args.methods, args.seeds, args.tune, **run)
    table = markdown_table(results, args.methods)
    plots = plot_results(results, stream, args.methods, out)
    if learner is not None:
        plots.append(plot_heatmaps(learner, stream, out))
    payload = {"benchmark": stream.name, "tasks": stream.tasks, "task_names": stream.task_names, "note": stream.note,
               "config": {**vars(args), "epochs": epochs}, "environment": environment(args.device),
               "results": [asdict(r) for r in results], "table": table,
               "wall_seconds": time.perf_counter() - wall}
    (out / "results.md").write_text(f"# {stream.name}, {args.backbone}\n\n{table}\n"
                                    + (f"\n{stream.note}\n" if stream.note else ""))
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    print(f"\n{table}\n\nwrote {out / 'results.json'}, {out / 'results.md'}, "
          f"{', '.join(str(p) for p in plots)}\nwall time {time.perf_counter() - wall:.0f} s")
    return 0
