"""Novelty: how typical an input is of the task it was recognized as, and the answer "none of my tasks".

The default recognizer's detectors are densities (class-conditional Gaussian mixtures, see
:mod:`rerelrp.recognize`), so an input's log-likelihood under a task's classes, in that task's own detector space
(the last hidden layer through S_0..S_t, the units detector t reads), says how much the input looks like the
task's training data. Log-likelihoods of different tasks live in spaces of different dimension and spread and
are not comparable as they are, so each task is calibrated on its own validation inputs when it is learned: the
:data:`LEVELS` quantiles of their log-likelihoods are kept (101 numbers per task; no input is kept).

- :func:`standardize`: an input's score, ``(loglik - median) / (median - 5 % quantile)`` of its task's validation
  log-likelihoods: 0 for a median validation input, -1 at the 5 % quantile, comparable between tasks.
- :func:`accepted`: the input is known when its log-likelihood is at least its task's ``1 - known_fraction``
  quantile, so that a ``known_fraction`` of each task's validation inputs is accepted.

The score of the recognized task is read from the features the detector chain computed anyway; only inputs
recognized as the newest task need one more pass (through S_0..S_T-1): what predict saves by not running a
rejected input's head.
"""
from __future__ import annotations

import numpy as np

__all__ = ["LEVELS", "calibrate", "standardize", "threshold", "accepted"]

#: Quantile levels of the validation log-likelihoods kept per task.
LEVELS = np.linspace(0.0, 1.0, 101)


def calibrate(loglik: np.ndarray) -> np.ndarray:
    """The :data:`LEVELS` quantiles ``(101,)`` of a task's ``(n,)`` validation log-likelihoods (n >= 2, finite)."""
    loglik = np.asarray(loglik, np.float64)
    if len(loglik) < 2 or not np.all(np.isfinite(loglik)):
        raise ValueError(f"calibration needs at least 2 finite validation log-likelihoods, got {len(loglik)} "
                         f"({int(np.sum(~np.isfinite(loglik)))} not finite)")
    return np.quantile(loglik, LEVELS)


def standardize(loglik: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Scores ``(n,)`` of log-likelihoods ``(n,)`` under one task: 0 at its validation median, -1 at its 5 %
    quantile."""
    median, low = np.interp([0.5, 0.05], LEVELS, quantiles)
    return (np.asarray(loglik, np.float64) - median) / max(median - low, np.finfo(np.float64).tiny)


def threshold(quantiles: np.ndarray, known_fraction: float) -> float:
    """The log-likelihood at or above which an input of this task is known: its ``1 - known_fraction`` quantile."""
    return float(np.interp(1.0 - known_fraction, LEVELS, quantiles))


def accepted(loglik: np.ndarray, quantiles: np.ndarray, known_fraction: float) -> np.ndarray:
    """Bool ``(n,)``: whether each log-likelihood reaches the task's :func:`threshold`."""
    return np.asarray(loglik, np.float64) >= threshold(quantiles, known_fraction)
