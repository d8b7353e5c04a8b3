"""Every check of user input, one rule and one message each, shared by the
library (``na.audit``, ``na.evaluate``, ``na.report``, ``na.inject_label_noise``,
``get_backbone``), the App's views and the CLI (which checks its options with
the same functions, under their option names, before anything runs).

Numbers must be numbers: a numeric string such as ``"0.1"`` is refused with a
message saying so, never converted, since a string where a number belongs is
usually a configuration read without parsing. The one exception is
``regularization``, whose values include the string ``"auto"``: it also takes
a numeric string (``"3.0"``), as the CLI passes it.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from noise_audit.errors import NoiseAuditError
from noise_audit.methods import BLOCK_DEFAULT_METHOD, BLOCK_METHODS, METHODS, PRECISIONS

if TYPE_CHECKING:
    from fiftyone.core.collections import SampleCollection


def _shown(value: Any, name: str) -> str:
    """``value`` for a message: its repr, and its type when that is the problem
    (not for a CLI option, ``--name``, whose values are all text)."""
    if name.startswith("--") or isinstance(value, (bool, numbers.Real)) or value is None:
        return repr(value)
    return f"{value!r} (a {type(value).__name__})"


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def integer(value: Any, name: str, minimum: int = 0, unit: str = "") -> int:
    """``value`` as an ``int``; raises unless it is a whole number ``>= minimum``.

    Integer types of numpy count, and so does a whole float (``64.0``, as a
    JSON form may send it); booleans and strings do not.
    """
    ok = _is_number(value) and math.isfinite(value) and float(value).is_integer() and value >= minimum
    if not ok:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer of at least {minimum}")
        raise NoiseAuditError(f"{name} must be {kind}{unit}, not {_shown(value, name)}")
    return int(value)


def fraction(value: Any, name: str = "fraction") -> float:
    """``value`` as a ``float`` in ``[0, 1)``; raises otherwise (see the module doc on strings)."""
    if not (_is_number(value) and 0 <= value < 1):
        hint = ""
        if isinstance(value, str) and not name.startswith("--"):
            try:
                hint = f"; pass the number {float(value)!r}, not a string"
            except ValueError:
                pass
        raise NoiseAuditError(f"{name} must be a number in [0, 1), not {_shown(value, name)}{hint}")
    return float(value)


def regularization(value: Any, name: str = "regularization") -> float | str:
    """``"auto"`` or a positive finite ``float`` (a numeric string is converted)."""
    if isinstance(value, str) and value == "auto":
        return value
    try:
        number = float(value) if isinstance(value, str) or _is_number(value) else math.nan
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise NoiseAuditError(
            f"{name} must be a positive number or 'auto' (influence needs an invertible Hessian), "
            f"not {_shown(value, name)}"
        )
    return number


def image_size(value: Any, name: str = "image_size") -> int:
    return integer(value, name, 1, " (pixels)")


def precision(value: Any, name: str = "precision") -> str:
    """One of :data:`~noise_audit.methods.PRECISIONS` (whether the machine runs
    it is :func:`noise_audit.core.backbones.resolve_precision`'s check)."""
    if not (isinstance(value, str) and value in PRECISIONS):
        raise NoiseAuditError(f"{name} must be one of {PRECISIONS}, not {_shown(value, name)}")
    return value


def seed(value: Any, name: str = "seed") -> int:
    return integer(value, name, 0)


def folds(value: Any, name: str = "folds") -> int:
    return integer(value, name, 2)


def count(value: Any, name: str) -> int:
    """A number of things to show or do, ``0`` allowed (e.g. ``top_n``, ``n_explained``)."""
    return integer(value, name, 0)


def check_split(classes: Sequence[str], labels: np.ndarray, is_test: np.ndarray) -> None:
    """Raises when a class has held-out samples but no training ones.

    The head could never predict such a class: its samples would all look
    mislabeled, and the influence on them says nothing.
    """
    trained = set(np.unique(labels[~is_test]).tolist())
    held_out = labels[is_test]
    only_test = {classes[c]: int((held_out == c).sum()) for c in np.unique(held_out).tolist() if c not in trained}
    if only_test:
        raise NoiseAuditError(
            f"Classes only in the held-out set, with no training samples (held-out counts): {only_test}; "
            "the head cannot learn them. Move some of their samples to training, or leave them out of the view"
        )


def influence_method(method: str, train_last_block: bool = False, distributed: bool = False) -> str:
    """The influence solver an audit will use; raises for one it cannot.

    ``"auto"`` stays ``"auto"`` (the linear head's closed form, else pyDVL's
    direct solver), except with ``train_last_block``, where it means
    :data:`~noise_audit.methods.BLOCK_DEFAULT_METHOD`.
    """
    if train_last_block:
        method = BLOCK_DEFAULT_METHOD if method == "auto" else method
        if method not in BLOCK_METHODS:
            raise NoiseAuditError(f"With train_last_block, method must be one of {BLOCK_METHODS}, not {method!r}")
    elif method != "auto" and method not in METHODS:
        raise NoiseAuditError(f"method must be 'auto' or one of {METHODS}, not {method!r}")
    if distributed and (train_last_block or method not in ("auto", "linear")):
        raise NoiseAuditError("client= runs the linear head's closed form on the workers: "
                              "use method 'auto' or 'linear' and no train_last_block")
    return method


def non_empty(samples: SampleCollection | None, what: str = "The view is empty: there is nothing to audit") -> None:
    """Raises unless ``samples`` is a collection with at least one sample."""
    if samples is None or len(samples) == 0:
        raise NoiseAuditError(what)


def truth_field(samples: SampleCollection, name: str | None, *, both_values: bool = False,
                optional: bool = False) -> None:
    """Raises unless ``name`` is a ``BooleanField`` of ``samples`` (True = the label is wrong).

    Args:
        both_values: also require both ``True`` and ``False`` among
            ``samples`` (precision and recall need both).
        optional: ``None`` means "no truth field" and passes.
    """
    import fiftyone as fo

    if name is None and optional:
        return
    schema = samples.get_field_schema()
    if name not in schema:
        bools = sorted(n for n, f in schema.items() if isinstance(f, fo.BooleanField))
        raise NoiseAuditError(f"Truth field {name!r} not found; boolean fields here: {bools}")
    if not isinstance(schema[name], fo.BooleanField):
        raise NoiseAuditError(
            f"Truth field {name!r} is of type {type(schema[name]).__name__}, not a BooleanField "
            "(True = the label is wrong)"
        )
    if both_values:
        counts = samples.count_values(name)
        if not counts.get(True) or not counts.get(False):
            raise NoiseAuditError(
                f"Truth field {name!r} needs both True and False values among the audited samples; counts {counts}"
            )


def out_dir(path: str | os.PathLike[str], files: Iterable[str]) -> str:
    """``path`` made absolute; raises unless it is, or can be made, a writable
    folder in which none of ``files`` is a folder."""
    if not path or not isinstance(path, (str, os.PathLike)):
        raise NoiseAuditError(f"out_dir must be a folder path, not {path!r}")
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise NoiseAuditError(f"out_dir {path} exists and is not a folder")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise NoiseAuditError(f"Cannot write the report under {path}: {existing} is not a writable folder")
    for name in files:
        target = os.path.join(path, name)
        if os.path.isdir(target):
            raise NoiseAuditError(f"Cannot write {target}: a folder of that name exists")
    return path
