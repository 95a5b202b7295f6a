"""Refusing non-finite numbers: a NaN or an infinity read from a file or produced by training is
reported with the file and tensor it sits in, never carried on into a result."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np


def describe_non_finite(array: np.ndarray) -> str | None:
    """None when every value is finite, else e.g. "nan at index 3 (2 of 40 values non-finite)"."""
    values = np.asarray(array)
    bad = ~np.isfinite(values)
    if not bad.any():
        return None
    where = int(np.flatnonzero(bad.reshape(-1))[0])
    return (f"{values.reshape(-1)[where]} at index {where} "
            f"({int(bad.sum())} of {values.size} values non-finite)")


def require_finite(tensors: Iterable[tuple[str, np.ndarray]], source: str,
                   error: Callable[[str], Exception] = ValueError) -> None:
    """Raises ``error("<source>: tensor '<name>' holds <value> at index i ...")`` for the first
    tensor holding a NaN or an infinity."""
    for name, array in tensors:
        problem = describe_non_finite(array)
        if problem is not None:
            raise error(f"{source}: tensor '{name}' holds {problem}; refusing a damaged or diverged file")


def require_finite_value(value: float, what: str, error: Callable[[str], Exception] = ValueError) -> None:
    if not math.isfinite(value):
        raise error(f"{what} is {value}, expected a finite number")


class TrainingDiverged(ValueError):
    """A non-finite loss, gradient or parameter: training stops before it reaches any file."""


def check_training_step(iteration: int, loss: float, arrays: dict[str, np.ndarray], what: str) -> None:
    """Raises TrainingDiverged naming the iteration (and tensor) when the loss or one of
    ``arrays`` (``what``: "gradient" or "parameter") is not finite."""
    if not math.isfinite(loss):
        raise TrainingDiverged(f"iteration {iteration}: the loss is {loss}")
    for name, array in arrays.items():
        problem = describe_non_finite(array)
        if problem is not None:
            raise TrainingDiverged(f"iteration {iteration}: the {what} of {name} holds {problem}")
