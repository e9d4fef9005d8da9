"""Sphinx extension: one page per committed benchmark result, written from its ``results.json`` before each build.

For every ``docs/results/<path>/results.json`` it writes ``docs/benchmarks/results/<path>.md`` (git-ignored, so a
result and its page cannot disagree): the benchmark's name, the command that wrote it (rebuilt from its ``config``
by :func:`benchmarks.check_results.command_line`), seeds, machine and package versions, its table, the note the
script saved beside it, rerelrp's per-task accuracy after the last task, and the plots of its folder; and
``docs/benchmarks/results/index.md``, every page grouped by folder.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from benchmarks.check_results import command_line
from benchmarks.reports import mean_std

DOCS = Path(__file__).resolve().parent.parent
RESULTS = DOCS / "results"
PAGES = DOCS / "benchmarks" / "results"


#: Headings of the results index, by the first folder under docs/results/ ("" for results directly in it).
GROUPS = {"": "Benchmarks (the options of their time; before the defaults chose their own: --preset tuned)",
          "defaults": "With the learner's defaults (--preset defaults)",
          "input-weight-0": "Without the input-space recognizer (--input-weight 0; the defaults otherwise, measured when "
                            "0 was the default)",
          "input-filters-random": "With the input space's random filters (--input-filters random; the defaults "
                                  "otherwise, measured when random was the default)",
          "recognition": "Recognizer ablations on the digits and MedMNIST",
          "split-fashion-orders": "Split Fashion-MNIST in other class orders (tuned, last hidden layer)",
          "split-fashion-orders-layers": "Split Fashion-MNIST in other class orders (tuned, every unit layer)",
          "split-mnist-orders": "Split MNIST in other class orders (tuned, last hidden layer)",
          "split-mnist-orders-layers": "Split MNIST in other class orders (tuned, every unit layer)",
          "split-mnist-transformed": "Split MNIST, inverted and rotated digits (tuned, last hidden layer)",
          "split-mnist-transformed-layers": "Split MNIST, inverted and rotated digits (tuned, every unit layer)"}


def wrapped(command: str, width: int = 100) -> str:
    """A shell command broken into lines of at most ``width`` characters (bar one long word), each continued with
    a backslash, breaking only before an option."""
    lines, line = [], ""
    for word in command.replace(" --", "\0--").split("\0"):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line + " \\")
            line = "    " + word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join(lines + [line])


def table_of(saved: dict) -> str:
    """The result's markdown table: the one its script saved, else its ``rows`` as a table."""
    if "table" in saved:
        return saved["table"]
    rows = saved.get("rows", [])
    if isinstance(rows, dict):  # keyed by variant
        rows = [{"variant": name, **row} for name, row in rows.items()]
    if not rows:
        return ""
    keys = list(rows[0])

    def cell(v) -> str:
        if isinstance(v, list):
            return ", ".join(map(cell, v))
        return f"{v:.3g}" if isinstance(v, float) else str(v).replace("|", "\\|")

    return "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                     + ["| " + " | ".join(cell(r.get(k, "")) for k in keys) + " |" for r in rows])


#: Streams of more tasks than this get their per-task table one row per task.
WIDE = 12


def per_task(saved: dict) -> str:
    """rerelrp's TAg, TAw and task recognition per task after the last task (mean over seeds), as a table."""
    runs = [r for r in saved.get("results", []) if isinstance(r, dict) and r.get("method") == "rerelrp"
            and "tag" in r]
    if not runs or "task_names" not in saved:
        return ""
    rows = {"TAg (%)": [r["tag"][-1] for r in runs], "TAw (%)": [r["taw"][-1] for r in runs]}
    if all(r.get("task_recognition_by_task") for r in runs):
        rows["task recognition (%)"] = [r["task_recognition_by_task"][-1] for r in runs]
    names = saved["task_names"]
    means = {label: 100 * np.mean(np.asarray(values, dtype=float), axis=0) for label, values in rows.items()}
    if len(names) > WIDE:  # one row per task
        lines = ["| task | " + " | ".join(means) + " |", "|---|" + "---|" * len(means)]
        lines += [f"| {name} | " + " | ".join(f"{mean[u]:.1f}" for mean in means.values()) + " |"
                  for u, name in enumerate(names)]
        return "\n".join(lines)
    lines = ["| rerelrp, after the last task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, mean in means.items():
        lines.append(f"| {label} | " + " | ".join(f"{v:.1f}" for v in mean) + " |")
    return "\n".join(lines)


def as_it_grows(saved: dict) -> str:
    """rerelrp's side memory, parameters, fit time (every stage, and the remember stage) and predict time after
    selected tasks (mean over seeds), as a table; empty for results measured before the benchmarks recorded the
    side memory after each task."""
    runs = [r for r in saved.get("results", []) if isinstance(r, dict) and r.get("method") == "rerelrp"
            and r.get("bytes_kept_by_task")]
    if not runs:
        return ""
    n = len(runs[0]["bytes_kept_by_task"])
    step = 5 if n <= 20 else 10
    chosen = sorted({1, n, *range(step, n + 1, step)})

    def mean(values) -> float:
        return float(np.mean(values))

    lines = ["| after task | kept beyond weights (KiB) | parameters (x initial) | free (%) | fit of that task (s) | "
             "of it, remember (s) | predict, test data of the tasks so far (s) |", "|---|---|---|---|---|---|---|"]
    for t in chosen:
        lines.append(f"| {t} | {mean([r['bytes_kept_by_task'][t - 1] for r in runs]) / 1024:,.1f} | "
                     f"{mean([r['parameters'][t - 1] for r in runs]):.2f} | "
                     f"{100 * mean([r['free_capacity'][t - 1] for r in runs]):.1f} | "
                     f"{mean([sum(r['stage_seconds'][t - 1].values()) for r in runs]):.1f} | "
                     f"{mean([r['stage_seconds'][t - 1].get('remember', 0.0) for r in runs]):.1f} | "
                     f"{mean([r['predict_seconds_by_task'][t - 1] for r in runs]):.1f} |")
    return "\n".join(lines)


#: The headline table of the README and of the benchmarks page: (row label, folder under docs/results).
HEADLINE = [("MedMNIST: Pneumonia → Breast → Retina, small CNN", "defaults/medmnist"),
            ("MedMNIST, ResNet-18 (3 epochs)", "defaults/medmnist-resnet18"),
            ("Split MNIST, 5 x 2", "defaults/split-mnist"),
            ("Split Fashion-MNIST, 5 x 2", "defaults/split-fashion-mnist"),
            ("Permuted MNIST, 10 tasks", "defaults/permuted-mnist"),
            ("Permuted MNIST, 20 tasks", "defaults/permuted-mnist-20"),
            ("Permuted MNIST, 50 tasks (500 test images each)", "defaults/permuted-mnist-50")]


def headline_table(link: str = "docs/results/{folder}/results.md") -> str:
    """The headline table, one row per :data:`HEADLINE` entry, from the committed results.json files; each row
    links ``link`` with its ``folder`` (the default: the results.md beside the results.json, as the README links
    it)."""
    lines = ["| benchmark | seeds | rerelrp TAg (%) | TAw (%) | task recognition (%) | replay-200 TAg (%) | "
             "joint TAg (%) | kept beyond weights (KiB) |", "|---|---|---|---|---|---|---|---|"]
    for label, folder in HEADLINE:
        saved = json.loads((RESULTS / folder / "results.json").read_text())
        runs = {m: [r for r in saved["results"] if r["method"] == m] for m in ("rerelrp", "replay", "joint")}
        final = {m: [np.mean(r["tag"][-1]) for r in rs] for m, rs in runs.items()}
        ours = runs["rerelrp"]
        lines.append(f"| [{label}]({link.format(folder=folder)}) | {len(ours)} | {mean_std(final['rerelrp'])} | "
                     f"{mean_std([np.mean(r['taw'][-1]) for r in ours])} | "
                     f"{mean_std([r['task_recognition'][-1] for r in ours])} | "
                     + " | ".join(mean_std(final[m]) if final[m] else "–" for m in ("replay", "joint"))
                     + f" | {np.mean([r['bytes_kept'] for r in ours]) / 1024:,.1f} |")
    return "\n".join(lines)


def page(path: Path) -> tuple[str, str]:
    """``(title, markdown)`` of the page of one ``results.json``."""
    saved = json.loads(path.read_text())
    folder = path.parent.relative_to(RESULTS)
    config, env = saved.get("config", {}), saved.get("environment", {})
    title = f"{saved.get('benchmark', folder.name)}: {folder}"
    up = "../" * (len(folder.parts) + 1)  # from docs/benchmarks/results/<folder>.md to docs/
    lines = [f"# {title}", ""]
    if config:
        seeds = config.get("seeds", [config.get("seed")])
        lines += ["Written by (from the repository root; data from `$RERELRP_DATA`, `--data-root` or `--download`, "
                  "see [Getting started](" + up + "getting-started.md)):", "",
                  "```bash", wrapped(command_line(config)), "```", "",
                  f"Seeds: {', '.join(map(str, seeds))}."
                  + (f" Wall time of the whole run: {saved['wall_seconds']:.0f} s." if "wall_seconds" in saved else "")]
    elif "command" in saved:
        lines += ["Written by:", "", "```bash", saved["command"], "```"]
    if env:
        lines += ["", "Machine and versions: " + ", ".join(f"{k} {v}" for k, v in env.items()) + "."]
    lines += ["", "Metrics: [definitions](" + up + "benchmarks/metrics.md) (averages over the tasks after the last "
              "task unless a column says otherwise).", "", table_of(saved), ""]
    if saved.get("note"):
        lines += [saved["note"], ""]
    matrix = per_task(saved)
    if matrix:
        lines += ["## Per task", "", matrix, ""]
    growing = as_it_grows(saved)
    if growing:
        lines += ["## As the stream grows", "", "rerelrp after the first task, every 5th (every 10th on streams of more "
                  "than 20 tasks) and the last:", "", growing, ""]
    images = sorted(path.parent.glob("*.png"))
    if images:
        lines += ["## Plots", ""]
        lines += [f"![{image.stem.replace('_', ' ')}]({up}results/{folder.as_posix()}/{image.name})"
                  for image in images]
    lines += ["", f"Raw files: `docs/results/{folder.as_posix()}/` in the repository."]
    return title, "\n".join(lines) + "\n"


def write_pages(app=None) -> list[Path]:
    """Write every result's page and the index; returns the pages written."""
    shutil.rmtree(PAGES, ignore_errors=True)
    written, groups = [], {}
    PAGES.mkdir(parents=True)
    for path in sorted(RESULTS.rglob("results.json")):
        folder = path.parent.relative_to(RESULTS)
        title, text = page(path)
        target = PAGES / (folder.as_posix() + ".md")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        written.append(target)
        groups.setdefault(folder.parts[0] if len(folder.parts) > 1 else "", []).append(folder.as_posix())
    index = ["# Every committed result", "",
             "One page per `results.json` under `docs/results/`, written from it at each docs build.", ""]
    for group, folders in sorted(groups.items(), key=lambda item: (item[0] != "defaults", item[0])):
        index += [f"## {GROUPS.get(group, group)}", "", "```{toctree}", ":maxdepth: 1", "", *folders, "```", ""]
    (PAGES / "index.md").write_text("\n".join(index))
    (PAGES / "headline.md").write_text(headline_table("/benchmarks/results/{folder}.md") + "\n")
    return written


def setup(app):
    app.connect("builder-inited", write_pages)
    return {"version": "1", "parallel_read_safe": True}
