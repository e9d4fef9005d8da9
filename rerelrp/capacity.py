"""Capacity: what a task may take of the free units, what it took, and when the pool will run out.

A unit kept by a finished task is frozen for good; the units kept by no task are the pool every later task
trains. Left alone, the first tasks take what they like, and a long stream ends with tasks that train nothing
but their own head rows. Three things here keep the pool in view:

- a *budget* (:func:`task_budget`): told how many tasks to expect (``n_tasks``), task t may keep at most
  ``free // (tasks left + 1)`` of each layer's free units (CPG's rule, per layer; Hung et al., *Compacting,
  Picking and Growing*, 2019), so every task to come finds at least as many; not told (an open-ended stream),
  each task may keep at most :data:`OPEN_SHARE` of each layer's free units, so the next task always finds the
  rest (and the learner's growth, where the model can grow, refills the pool);
- a *report* per task and per layer of the units each task kept, how many of them were new (taken from the
  pool) or reused (frozen by an earlier task), and what stayed free (:func:`capacity_report`);
- a *forecast* from the units the tasks so far took of each layer, warned *before* a layer runs out
  (:func:`running_out`), and a check that a task was learned better than its majority class
  (:func:`above_chance`), so that a task without room is never learned at chance silently.

Masks are those of :attr:`rerelrp.ReReLRP.masks_`: per task, one bool tensor ``(n_units,)`` per unit layer.
This module only counts; the fresh start of the free units of every task after the first, which rewrites their
weights and BatchNorm statistics, is :mod:`rerelrp.reinit`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from scipy.stats import binomtest

from .network import Units

__all__ = ["OPEN_SHARE", "counted", "summary", "kept_by", "task_budget", "free_capacity", "capacity_report",
           "running_out", "pool_low", "above_chance", "at_chance_message", "warnings_after", "check_tasks",
           "check_masks"]

Masks = Sequence[Sequence[torch.Tensor]]

#: Without ``n_tasks``, the most of each layer's free units one task may keep (at least one unit).
OPEN_SHARE = 0.25


def counted(n: int, noun: str) -> str:
    """``"1 task"``, ``"3 tasks"``: ``n`` and ``noun``, plural unless n is 1 (for messages)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"

def kept_by(masks: Masks, sizes: Sequence[int], upto: int | None = None) -> list[torch.Tensor]:
    """Per layer of ``sizes`` units, the bool mask ``(n_units,)`` of the units kept by any of the tasks
    ``0..upto-1`` (all tasks: ``upto=None``): the frozen units; all False before the first task."""
    kept = [torch.zeros(n, dtype=torch.bool) for n in sizes]
    for keep in list(masks)[:upto]:
        kept = [k | m.cpu() for k, m in zip(kept, keep)]
    return kept


def task_budget(free_units: Sequence[int], task: int, n_tasks: int | None) -> list[int]:
    """Per unit layer, the most of its ``free_units`` that task ``task`` (0-based) may keep. When ``n_tasks``
    tasks are expected: CPG's ``free // (tasks left after this one + 1)``, layer by layer (a layer that one kind
    of task needs most, such as the first layer of Permuted MNIST, is not emptied by the others' thrift); a
    task past ``n_tasks`` may take all. Without ``n_tasks``: :data:`OPEN_SHARE` of the free units, at least one
    where any is free."""
    if n_tasks is None:
        return [min(int(free), max(1, int(free * OPEN_SHARE))) for free in free_units]
    return [int(free) // (max(n_tasks - task - 1, 0) + 1) for free in free_units]


def free_capacity(units: Units, masks: Masks) -> dict:
    """Fraction of units kept by no task: ``{"overall": float, "per_layer": {name: float}}``."""
    used = kept_by(masks, units.sizes)
    per_layer = {layer.name: 1.0 - float(u.float().mean()) for layer, u in zip(units.layers, used)}
    return {"overall": 1.0 - sum(int(u.sum()) for u in used) / units.total, "per_layer": per_layer}


def capacity_report(units: Units, masks: Masks, growth: Sequence[Sequence[int]] | None = None) -> list[dict]:
    """One row per task and unit layer, in order: ``task``, ``layer`` (name), ``units`` (the layer's width while
    the task was learned), ``grown`` (units added to the layer just before the task, from ``growth``: per task,
    per layer; None: no growth), ``kept`` (units of the task's subnetwork), ``new`` (of those, taken from the free
    pool: frozen from this task on), ``reused`` (frozen by an earlier task), ``free`` (units still free after the
    task, of the layer's width then)."""
    rows = []
    final = units.sizes
    growth = [[0] * len(final) for _ in masks] if growth is None else growth
    for t, keep in enumerate(masks):
        widths = [n - sum(g[i] for g in growth[t + 1:]) for i, n in enumerate(final)]
        for i, (layer, k, old) in enumerate(zip(units.layers, keep, kept_by(masks, final, t))):
            k = k.cpu()
            rows.append({"task": t, "layer": layer.name, "units": widths[i], "grown": growth[t][i],
                         "kept": int(k.sum()), "new": int((k & ~old).sum()), "reused": int((k & old).sum()),
                         "free": int((~(k | old))[:widths[i]].sum())})
    return rows



def summary(report: list[dict], prune_results: Sequence, tasks: Sequence[Sequence[int]]) -> str:
    """A text table of what was decided per task: its classes; per unit layer (``name: kept (new) / budget, +grown,
    free after``) from ``report`` (:func:`capacity_report`'s rows); the pruning's measure and its validation
    accuracy against the unpruned network's, from ``prune_results`` (:class:`rerelrp.prune.PruneResult` per task),
    marked where the budget forced it beyond the threshold."""
    lines = ["task | classes | per unit layer: kept (new) / budget, +grown, free after | pruned to (unpruned), measure"]
    for t, (classes, result) in enumerate(zip(tasks, prune_results)):
        rows = [r for r in report if r["task"] == t]
        budget = result.budget or [None] * len(rows)
        layers = "; ".join(f"{r['layer']}: {r['kept']} ({r['new']}) / {'-' if b is None else b}, +{r['grown']}, "
                           f"{r['free']} free" for r, b in zip(rows, budget))
        forced = " [budget forced it past the threshold]" if result.over_threshold else ""
        lines.append(f"{t} | {list(classes)} | {layers} | {result.accuracy:.1%} ({result.base_accuracy:.1%}), "
                     f"{result.measure}{forced}")
    return "\n".join(lines)

def running_out(units: Units, masks: Masks, n_tasks: int,
                growth: Sequence[Sequence[int]] | None = None) -> str | None:
    """A warning's text when, at the mean rate at which the tasks so far took each layer's free units, some
    layer will run out before the ``n_tasks`` expected are learned; None when every layer lasts (or every expected
    task is learned). ``growth``: as for :func:`capacity_report`."""
    rows = capacity_report(units, masks, growth)
    learned = len(masks)
    ahead = n_tasks - learned
    if ahead <= 0:
        return None
    short = []
    for layer in units.layers:
        mine = [r for r in rows if r["layer"] == layer.name]
        rate, free = sum(r["new"] for r in mine) / learned, mine[-1]["free"]
        lasts = math.inf if rate == 0 else free / rate
        if lasts < ahead:
            short.append(f"'{layer.name}' ({free} of {layer.n_units} free, {rate:.1f} taken per task: "
                         f"{lasts:.1f} tasks' worth)")
    if not short:
        return None
    return (f"capacity forecast after {counted(learned, 'task')}: at the rate so far, {'; '.join(short)} will not last "
            f"the {counted(ahead, 'task')} still expected (n_tasks={n_tasks}), and later tasks would train only the "
            "few units left. Each task to come keeps at most its budget; a larger acc_drop makes tasks keep fewer "
            "units, a wider model or grow > 0 leaves more")


def pool_low(units: Units, masks: Masks, initial_sizes: Sequence[int], low: float = 0.1) -> str | None:
    """A warning's text when, on an open-ended stream that does not grow, some unit layer has fewer free units
    than ``low`` of its initial width (each later task may keep at most :data:`OPEN_SHARE` of them); else None."""
    kept = kept_by(masks, units.sizes)
    short = [f"'{layer.name}' ({layer.n_units - int(k.sum())} of {layer.n_units} free)"
             for layer, k, size in zip(units.layers, kept, initial_sizes) if layer.n_units - int(k.sum()) < low * size]
    if not short:
        return None
    return (f"capacity after {counted(len(masks), 'task')}: {'; '.join(short)}: each task to come keeps at most "
            f"{OPEN_SHARE:.0%} of what is free, fewer and fewer units. If you know how many tasks the stream has, set "
            "n_tasks (an even share each); a wider model, or one that can grow (grow), leaves more")


def above_chance(correct: torch.Tensor, labels: torch.Tensor, alpha: float = 0.05) -> bool:
    """Whether accuracy ``correct`` ``(n,)`` (bool, per image) is significantly above answering the most
    frequent class of ``labels`` ``(n,)`` every time: one-sided binomial test at level ``alpha``."""
    n = len(labels)
    if n == 0:
        return True
    majority = float(torch.unique(labels.cpu(), return_counts=True)[1].max()) / n
    if majority >= 1.0:
        return True  # one class only: there is no chance level to beat
    return binomtest(int(correct.sum()), n, majority, alternative="greater").pvalue < alpha



def at_chance_message(task: int, correct: torch.Tensor, labels: torch.Tensor, free: int, total: int,
                      n_tasks: int | None) -> str:
    """The warning's text when task ``task``'s unpruned network, right on the validation images where ``correct``
    ``(n,)`` is True (``labels`` ``(n,)`` their classes), is not :func:`above_chance`; ``free`` of ``total`` units
    were free for it. The advice follows the likely cause: few free units (under a tenth: earlier tasks took them),
    or, with room to learn, the task's training itself."""
    majority = float(torch.unique(labels.cpu(), return_counts=True)[1].max()) / max(len(labels), 1)
    if free < 0.1 * total:
        advice = ("earlier tasks kept the rest: to leave later tasks more room, "
                  + ("set n_tasks (an even share per task) or " if n_tasks is None else "")
                  + "a larger acc_drop from the first task on, or use a wider model or grow > 0")
    else:
        advice = "the free units were enough, so train it longer (epochs), at another lr, or check its labels"
    return (f"task {task} reached {float(correct.float().mean()):.1%} validation accuracy before pruning, no better "
            f"than always answering its most frequent class ({majority:.1%} of its validation images); {free} of "
            f"{total} units were free for it. It is learned as it is; {advice}")


def warnings_after(units: Units, masks: Masks, result, n_tasks: int | None, growth: Sequence[Sequence[int]],
                   growing: bool, initial_sizes: Sequence[int]) -> list[tuple[str, str]]:
    """The capacity warnings after the newest task of ``masks`` was pruned to ``result`` (its
    :class:`rerelrp.prune.PruneResult`), each as ``(kind, text)``: that its budget cost it more than the
    threshold; unless ``growing`` (each layer then grows before it runs out, or warns that it cannot),
    :func:`running_out`'s forecast with ``n_tasks``, or :func:`pool_low` without."""
    messages = []
    if result.over_threshold:
        measured = "validation accuracy" if result.measure == "accuracy" else \
            "mean validation probability of the true class"
        rule = f"n_tasks={n_tasks}" if n_tasks is not None else (
            f"n_tasks=None: at most {OPEN_SHARE:.0%} of each layer's free units; set n_tasks if you know the "
            "stream's length")
        messages.append((
            "over budget",
            f"task {len(masks) - 1} needed more than its budget of {sum(result.budget)} free units ({result.budget} "
            f"per unit layer, {rule}): its subnetwork reaches {result.accuracy:.1%} {measured} against "
            f"{result.base_accuracy:.1%} unpruned, more than acc_drop below it; a wider model leaves every task more "
            "room"))
    if not growing:
        forecast = running_out(units, masks, n_tasks, growth) if n_tasks is not None else \
            pool_low(units, masks, initial_sizes)
        if forecast:
            messages.append(("forecast", forecast))
    return messages


def check_tasks(tasks: Sequence[Sequence[int]], n_outputs: int) -> list[list[int]]:
    """``tasks`` as lists of ints; ValueError unless each holds two or more distinct class ids in
    ``[0, n_outputs)`` that no earlier task holds."""
    checked, seen = [list(map(int, classes)) for classes in tasks], set()
    for t, classes in enumerate(checked):
        if len(classes) < 2 or len(set(classes)) != len(classes) or not all(0 <= c < n_outputs for c in classes):
            raise ValueError(f"meta.json gives task {t} the classes {classes}: not two or more distinct ids in "
                             f"[0, {n_outputs})")
        if seen & set(classes):
            raise ValueError(f"meta.json gives task {t} classes {sorted(seen & set(classes))} of an earlier task")
        seen |= set(classes)
    return checked


def check_masks(masks: Masks, sizes: Sequence[int]) -> None:
    """ValueError unless every task's mask of every unit layer is a bool tensor ``(n_units,)`` of ``sizes``."""
    for t, keep in enumerate(masks):
        for i, (mask, n) in enumerate(zip(keep, sizes)):
            if mask.dtype != torch.bool or tuple(mask.shape) != (n,):
                raise ValueError(f"tensors.safetensors holds mask.{t}.{i} as {mask.dtype} {tuple(mask.shape)}, "
                                 f"not bool ({n},)")
