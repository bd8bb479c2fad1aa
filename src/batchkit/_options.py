"""Checks of the options that `BatchRunner`, `Worker`, `RetryPolicy` and the command line share.

Each check keeps the message its callers have always given, so a caller picks the one
whose wording it uses: `positive_seconds` for `BatchRunner`, `seconds` for `Worker` and
`RetryPolicy`; the command line reads text and tests it with the ``is_`` predicates.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "check_generator",
    "check_metadata_filter",
    "is_filter_value",
    "is_positive_int",
    "is_seconds",
    "positive_int",
    "positive_seconds",
    "seconds",
]

#: The values a metadata filter may compare a top-level key with.
_SCALARS = (str, int, float, bool, type(None))


def is_seconds(value: object, *, allow_zero: bool = False) -> TypeGuard[int | float]:
    """Whether ``value`` is a finite number (not a bool) above 0, or at least 0."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )


def seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    """``value`` as a float of seconds; `ValueError` naming ``name`` when it is not one."""
    if is_seconds(value, allow_zero=allow_zero):
        return float(value)
    least = "at least 0" if allow_zero else "more than 0"
    raise ValueError(f"{name} must be a finite number of seconds, {least}; got {value!r}")


def positive_seconds(name: str, value: object, *, allow_none: bool = False) -> None:
    """Raise `ValueError` naming ``name`` unless ``value`` is seconds above 0 (or `None`)."""
    if value is None and allow_none:
        return
    if not is_seconds(value):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


def is_positive_int(value: object) -> TypeGuard[int]:
    """Whether ``value`` is an integer (not a bool) of at least 1."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def positive_int(name: str, value: object) -> int:
    """``value``, an integer of at least 1; `ValueError` naming ``name`` when it is not one."""
    if is_positive_int(value):
        return value
    raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")


def check_generator(generator: object) -> None:
    """Raise `TypeError` unless the generator can be called."""
    if not callable(generator):
        raise TypeError(f"generator must be callable, got {generator!r}")


def check_metrics(metrics: object) -> None:
    """Raise `TypeError` unless ``metrics`` is a `batchkit.metrics.Metrics` or `None`."""
    from .metrics import Metrics

    if metrics is not None and not isinstance(metrics, Metrics):
        raise TypeError(
            f"metrics must be a batchkit.metrics.Metrics (PrometheusMetrics) or None, "
            f"got {metrics!r}"
        )


def is_filter_value(value: object) -> bool:
    """Whether a metadata filter can compare a top-level key with ``value``: a JSON scalar."""
    return isinstance(value, _SCALARS)


def check_metadata_filter(metadata: Mapping[Any, object]) -> None:
    """Raise `ValueError` unless the filter maps top-level keys to scalar values."""
    for key, value in metadata.items():
        if not isinstance(key, str) or not is_filter_value(value):
            raise ValueError(
                "metadata filters map top-level keys to str, int, float, bool or "
                f"None values; got {key!r}: {value!r}"
            )
