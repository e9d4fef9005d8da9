"""Reports of a benchmark run: the Markdown table, the plots, the environment."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

import rerelrp

from benchmarks.protocol import StreamResult
from benchmarks.stream import Stream


def mean_std(values: Sequence[float], scale: float = 100.0) -> str:
    """``"mean ± std"`` of ``values`` times ``scale``, one decimal (the mean alone for one value): a table cell."""
    values = np.asarray(values, dtype=float) * scale
    return f"{values.mean():.1f} ± {values.std():.1f}" if len(values) > 1 else f"{values.mean():.1f}"


def markdown_table(results: Sequence[StreamResult], methods: Sequence[str]) -> str:
    """Final TAg/TAw average accuracy, forgetting, task recognition (and the task recognized worst, over seeds),
    bytes kept and times; mean ± std over seeds."""
    label = bool(results and results[0].tag_label)  # a label-only accuracy (Permuted MNIST's digit)
    grown = any(r.parameters and r.parameters[-1] > 1 for r in results)  # rerelrp with grow
    lines = ["| method | TAg acc (%) | TAw acc (%) | " + ("label-only TAg acc (%) | " if label else "")
             + "TAg forgetting (pts) | TAw forgetting (pts) | task recognition (%) "
             "| free capacity (%) | " + ("parameters (x initial) | " if grown else "")
             + "kept beyond weights (KiB) | train (s) | predict (s) |",
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if label else "") + ("---|" if grown else "")]
    for name in methods:
        rs = [r for r in results if r.method == name]
        if not rs:
            continue
        rec = mean_std([r.task_recognition[-1] for r in rs]) if rs[0].task_recognition else "–"
        if rs[0].task_recognition_by_task:  # the task recognized worst, after the last task (lowest over seeds)
            rec += f"; weakest task {100 * min(min(r.task_recognition_by_task[-1]) for r in rs):.1f}"
        free = mean_std([r.free_capacity[-1] for r in rs]) if rs[0].free_capacity else "–"
        forget = {m: mean_std([(r.forgetting(getattr(r, m)) or [0.0])[-1] for r in rs]) for m in ("tag", "taw")}
        lines.append(
            f"| {name} | {mean_std([r.average(r.tag)[-1] for r in rs])} | {mean_std([r.average(r.taw)[-1] for r in rs])} "
            + (f"| {mean_std([r.average(r.tag_label)[-1] for r in rs])} " if label else "")
            + f"| {forget['tag']} | {forget['taw']} | {rec} | {free} "
            + (_parameters(rs) if grown else "")
            + f"| {np.mean([r.bytes_kept for r in rs]) / 1024:.1f} | {mean_std([r.train_seconds for r in rs], 1)} "
            f"| {mean_std([r.predict_seconds for r in rs], 1)} |")
    return "\n".join(lines)


def _parameters(rs: Sequence[StreamResult]) -> str:
    """The table cell of the parameters after the last task as a multiple of the initial ones (– for baselines)."""
    return f"| {np.mean([r.parameters[-1] for r in rs]):.2f} " if rs[0].parameters else "| – "


def plot_results(results: Sequence[StreamResult], stream: Stream, methods: Sequence[str], out: Path) -> list[Path]:
    """Average accuracy after each task (TAg and TAw), rerelrp's final accuracy matrix, its free capacity."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    T = len(stream.tasks)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    styles = ["-", "--", "-.", ":"]
    for ax, matrix, title in zip(axes, ("tag", "taw"), ("task-agnostic (no task id)", "task-aware (task id given)")):
        for i, name in enumerate(methods):
            curves = np.array([StreamResult.average(getattr(r, matrix)) for r in results if r.method == name])
            if len(curves):  # a marker and a line style per method: overlapping curves stay visible
                mean, std = curves.mean(0) * 100, curves.std(0) * 100
                ax.plot(range(1, T + 1), mean, marker="os^Dvx"[i % 6], linestyle=styles[i % len(styles)],
                        markersize=7 if name == "rerelrp" else 5, label=name,
                        linewidth=2.5 if name == "rerelrp" else 1.5, zorder=3 if name == "rerelrp" else 2)
                ax.fill_between(range(1, T + 1), mean - std, mean + std, alpha=0.15)
        ax.set_title(f"{stream.name}: {title}")
        ax.set_xlabel("tasks learned")
        ax.set_xticks(range(1, T + 1) if T <= 20 else [1, *range(5, T + 1, 5)])  # long streams: every 5th
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("average accuracy over tasks seen (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)  # one legend for both panels
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    paths.append(out / "accuracy_per_task.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    ours = [r for r in results if r.method == "rerelrp"]
    if ours:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        matrix = np.full((T, T), np.nan)
        for t in range(T):
            matrix[t, :t + 1] = np.mean([r.tag[t] for r in ours], axis=0) * 100
        im = axes[0].imshow(matrix, vmin=0, vmax=100, cmap="viridis")
        for (i, j), v in np.ndenumerate(matrix):
            if not np.isnan(v):
                axes[0].text(j, i, f"{v:.0f}", ha="center", va="center", color="w" if v < 60 else "k")
        axes[0].set_xticks(range(T), stream.task_names, rotation=20)
        axes[0].set_yticks(range(T), [f"after {n}" for n in stream.task_names])
        axes[0].set_xlabel("task evaluated (its test data)")
        axes[0].set_ylabel("tasks learned so far")
        axes[0].set_title("rerelrp task-agnostic accuracy (%) per task")
        fig.colorbar(im, ax=axes[0], label="accuracy (%)")
        free = np.array([r.free_capacity for r in ours]) * 100
        mean, std = free.mean(0), free.std(0)
        axes[1].bar(range(1, T + 1), mean, yerr=[np.minimum(std, mean), np.minimum(std, 100 - mean)],
                    color="tab:green")  # ± one std over seeds, clipped to [0, 100]
        axes[1].set_xticks(range(1, T + 1), stream.task_names, rotation=20)
        axes[1].set_xlabel("after learning task")
        axes[1].set_ylim(0, 100)
        axes[1].set_ylabel("units still free (%)")
        axes[1].set_title("rerelrp free capacity after each task")
        fig.tight_layout()
        paths.append(out / "rerelrp_matrix_and_capacity.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def _image(x: torch.Tensor) -> np.ndarray:
    """An input as something imshow draws: (C, H, W) -> (H, W[, 3]); a flat square vector -> (side, side)."""
    if x.dim() == 1:
        side = int(round(len(x) ** 0.5))
        return x.reshape(side, side).numpy()
    if x.dim() == 3:
        return x.permute(1, 2, 0).numpy() if x.shape[0] == 3 else x[0].numpy()
    return x.numpy()


def plot_heatmaps(learner: rerelrp.ReReLRP, stream: Stream, out: Path, per_task: int = 4) -> Path:
    """LRP heatmaps of a few test images per task from ``learner.explain``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = len(stream.tasks)
    fig, axes = plt.subplots(T, 2 * per_task, figsize=(2 * per_task * 1.3, T * 1.5))
    axes = np.atleast_2d(axes)
    for t in range(T):
        x, y = stream.test[t][0][:per_task], stream.test[t][1][:per_task]
        heat = learner.explain(x)
        heat = heat.sum(1) if heat.dim() == 4 else heat  # relevance summed over colour channels
        pred = learner.predict(x)
        for i in range(len(x)):
            axes[t, 2 * i].imshow(_image(x[i]), cmap="gray")
            axes[t, 2 * i].set_title(f"true: {stream.class_name(int(y[i]))}"[:20], fontsize=7)
            bound = float(heat[i].abs().max()) or 1.0
            shown = axes[t, 2 * i + 1].imshow(_image(heat[i]) / bound, cmap="bwr", vmin=-1, vmax=1)
            axes[t, 2 * i + 1].set_title(f"→ {stream.class_name(int(pred[i]))}"[:20], fontsize=7,
                                         color="k" if pred[i] == y[i] else "tab:red")
        axes[t, 0].set_ylabel(stream.task_names[t], fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("rerelrp.explain: input relevance of the predicted class (→, in red when wrong); red +, blue −",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.89, 1))  # the colour bar and its tick labels fit in the last 11 %
    fig.colorbar(shown, cax=fig.add_axes((0.905, 0.15, 0.012, 0.7)), ticks=[-1, -0.5, 0, 0.5, 1],
                 label="relevance / max |relevance| of the image")
    path = out / "lrp_heatmaps.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def environment(device: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    info = {"python": platform.python_version(), "rerelrp": rerelrp.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device}
    for package in ("torch", "torchvision", "zennit", "scikit-learn", "numpy", "medmnist", "avalanche-lib"):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
