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
from collections.abc import Iterable, Mapping, Sequence
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


def _as_number(value: Any) -> float:
    """``value`` as a float (a numeric string is converted), or NaN when it is not a number."""
    try:
        return float(value) if isinstance(value, str) or _is_number(value) else math.nan
    except ValueError:
        return math.nan


def regularization(value: Any, name: str = "regularization") -> float | str:
    """``"auto"`` or a positive finite ``float`` (a numeric string is converted)."""
    if isinstance(value, str) and value == "auto":
        return value
    number = _as_number(value)
    if not (math.isfinite(number) and number > 0):
        raise NoiseAuditError(
            f"{name} must be a positive number or 'auto' (influence needs an invertible Hessian), "
            f"not {_shown(value, name)}"
        )
    return number


def influence_weight(value: Any, name: str = "influence_weight") -> float | str:
    """``"auto"`` (chosen per audit, :mod:`noise_audit.core.weight_probe`) or a number in
    [0, 1], the ranking's share of average influence (a numeric string is converted)."""
    if isinstance(value, str) and value == "auto":
        return value
    number = _as_number(value)
    if not (math.isfinite(number) and 0 <= number <= 1):
        raise NoiseAuditError(f"{name} must be 'auto' or a number in [0, 1] (the ranking's share of average "
                              f"influence; 0.5 was the fixed weight before), not {_shown(value, name)}")
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
    """Raises unless ``samples`` is a collection with at least one sample.

    Counted exactly: a whole dataset's ``len()`` is MongoDB's *estimated*
    count, which can be stale after the server crashed (MongoDB documents
    this; a killed ``mongod`` once reported 0 for a full dataset here).
    """
    if samples is None or samples.limit(1).count() == 0:
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


# -- the review loop (noise_audit.store.review, noise_audit.store.applied, noise_audit.annotation) --

REVIEW_DECISIONS = ("accept", "keep", "relabel", "unsure")


def review_decision(decision: Any, label: Any = None) -> str:
    """``decision`` if it is one of :data:`REVIEW_DECISIONS`; ``label`` goes with ``relabel`` only."""
    if decision not in REVIEW_DECISIONS:
        raise NoiseAuditError(f"decision must be one of {REVIEW_DECISIONS}, not {_shown(decision, 'decision')}")
    if decision == "relabel" and label is None:
        raise NoiseAuditError("decision 'relabel' needs label=, the class the sample should have")
    if decision != "relabel" and label is not None:
        raise NoiseAuditError(f"label= goes with decision 'relabel' only, not with {decision!r} "
                              "(accept takes the suggested label, keep the given one, unsure none)")
    return decision


def review_label(label: Any, classes: Sequence[str]) -> str:
    """``label`` if it is one of ``classes`` (the label schema of the audited field)."""
    if not isinstance(label, str) or label not in classes:
        raise NoiseAuditError(f"Class {_shown(label, 'label')} is not in the label schema of the audited field; "
                              f"classes: {sorted(classes)}")
    return label


def audited_sample_ids(sample_ids: Any, audited: Iterable[str], key: str) -> list[str]:
    """``sample_ids`` as a list of distinct ids (a single id is a list of one); raises
    unless there is at least one and every one was scored by the audit ``key``."""
    if isinstance(sample_ids, str):
        sample_ids = [sample_ids]
    if not isinstance(sample_ids, Iterable) or isinstance(sample_ids, (bytes, dict)):
        raise NoiseAuditError(f"sample_ids must be a sample id or a list of them, not {_shown(sample_ids, 'sample_ids')}")
    ids = list(dict.fromkeys(sample_ids))
    if not ids:
        raise NoiseAuditError("sample_ids is empty: name at least one sample to review")
    known = set(audited)
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise NoiseAuditError(f"{len(unknown)} of the sample ids were not scored by audit {key!r}, "
                              f"e.g. {unknown[:3]}; review only audited samples")
    return ids


def reviewer(name: Any) -> str:
    """A reviewer's name: non-empty text of at most 200 characters."""
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise NoiseAuditError(f"reviewer must be a non-empty name of at most 200 characters, not {_shown(name, 'reviewer')}")
    return name.strip()


# -- embeddings: a vector field used as the audit's features (core/embeddings.py reads it) --


def vector_fields(samples: SampleCollection) -> list[str]:
    """Names of the top-level fields of ``samples`` that can hold one vector per sample.

    That is a ``VectorField`` (what ``compute_embeddings`` writes, and what
    ``set_values`` of 1-d numpy arrays creates), an ``ArrayField``, or a
    ``ListField`` of floats or integers (``compute_visualization``'s points,
    ``set_values`` of lists). ``VectorField`` is not a subclass of
    ``ArrayField`` in FiftyOne, so both are asked for.
    """
    import fiftyone as fo

    arrays = samples.get_field_schema(ftype=[fo.VectorField, fo.ArrayField])
    lists = samples.get_field_schema(ftype=fo.ListField, subfield=[fo.FloatField, fo.IntField])
    return sorted(set(arrays) | set(lists))


def embeddings_field(samples: SampleCollection, name: Any) -> str:
    """``name`` if it is a vector field of ``samples`` (see :func:`vector_fields`); raises otherwise."""
    schema = samples.get_field_schema()
    if not isinstance(name, str) or name not in schema:
        raise NoiseAuditError(f"Embeddings field {name!r} not found; vector fields here: {vector_fields(samples)}")
    if name not in vector_fields(samples):
        field = schema[name]
        inner = getattr(field, "document_type", None) or getattr(field, "field", None)
        kind = type(field).__name__ + (f"({getattr(inner, '__name__', type(inner).__name__)})" if inner else "")
        raise NoiseAuditError(
            f"Field {name!r} is a {kind}, not a vector field (VectorField, ArrayField or ListField of numbers); "
            f"vector fields here: {vector_fields(samples)}")
    return name


def embedding_vectors(name: str, ids: Sequence[str] | np.ndarray, values: Sequence[Any]) -> np.ndarray:
    """The vectors of field ``name`` as one float32 matrix, one row per sample of ``ids``.

    One rule, one message each, in this order: every sample has a vector;
    every value is a non-empty 1-d vector of numbers; all have the same
    length; none holds NaN or inf (after the conversion to float32, so a value
    beyond float32's range counts as inf).
    """
    missing = [i for i, v in zip(ids, values) if v is None]
    if missing:
        raise NoiseAuditError(
            f"{len(missing)} of {len(ids)} samples have no vector in {name!r}, e.g. sample {missing[0]}; "
            "compute the embeddings of every audited sample, or leave those samples out of the view")
    shapes = []
    for i, v in zip(ids, values):
        try:
            shape = np.shape(np.asarray(v, dtype=np.float64))
        except (TypeError, ValueError):
            shape = None
        if shape is None or len(shape) != 1 or shape[0] == 0:
            shown = "values that are not numbers" if shape is None else f"an array of shape {shape}"
            raise NoiseAuditError(f"Field {name!r} holds {shown} for sample {i}, not a vector of numbers")
        shapes.append(shape[0])
    lengths = np.array(shapes)
    dims, counts = np.unique(lengths, return_counts=True)
    if len(dims) > 1:
        odd = ids[int(np.flatnonzero(lengths != dims[counts.argmax()])[0])]
        per_length = {int(d): int(c) for d, c in zip(dims, counts)}
        raise NoiseAuditError(
            f"Field {name!r} holds vectors of different lengths (length: samples) {per_length}, e.g. sample {odd}; "
            "every audited sample needs a vector of the same length")
    matrix = np.empty((len(values), int(lengths[0]) if len(lengths) else 0), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32's range: inf, refused below
        for row, v in enumerate(values):
            matrix[row] = np.asarray(v, dtype=np.float64)
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        raise NoiseAuditError(
            f"{int(bad.sum())} of {len(ids)} samples have NaN or inf in their vector in {name!r}, "
            f"e.g. sample {ids[int(np.flatnonzero(bad)[0])]}")
    return matrix


def image_settings_unused(field: str | None, given: Mapping[str, Any]) -> None:
    """Raises when settings that only shape features computed from the images
    (``given``: name -> value, those that differ from their defaults) come with an
    embeddings field, whose vectors are the features: none of them would be used."""
    if field is not None and given:
        cli = any(k.startswith("--") for k in given)
        shown = ", ".join(f"{k} {v}" if cli else f"{k}={v!r}" for k, v in given.items())
        named = f"--embeddings-field {field}" if cli else f"embeddings_field={field!r}"
        raise NoiseAuditError(
            f"{shown}: these settings compute features from the images; with {named} the features are "
            "the field's vectors, so leave them at their defaults")


# -- what a label field holds: an image's class, or the class of every box (core/objects.py) --

LABEL_KINDS = {"Classification": "classification", "Detections": "detections"}
UNSUPPORTED_LABELS = ("Detection", "Keypoints", "Keypoint", "Polylines", "Polyline", "Segmentation",
                      "Classifications", "Heatmap", "GeoLocation", "TemporalDetections")


def label_fields(samples: SampleCollection) -> list[str]:
    """Names of the top-level fields an audit can read: ``fo.Classification`` and ``fo.Detections``."""
    import fiftyone as fo

    return sorted(samples.get_field_schema(embedded_doc_type=[fo.Classification, fo.Detections]))


def label_field_kind(samples: SampleCollection, name: Any) -> str:
    """``"classification"`` or ``"detections"``: what the label field ``name`` holds.

    Raises one message naming what is supported for any other label type
    (``Keypoints``, ``Polylines``, ``Segmentation``, ...) or a missing field.
    """
    schema = samples.get_field_schema()
    if not isinstance(name, str) or name not in schema:
        raise NoiseAuditError(f"Label field {name!r} not found; label fields here (Classification or Detections): "
                              f"{label_fields(samples)}")
    doc = getattr(schema[name], "document_type", None)
    kind = LABEL_KINDS.get(getattr(doc, "__name__", ""))
    if kind is None:
        shown = getattr(doc, "__name__", None) or type(schema[name]).__name__
        raise NoiseAuditError(
            f"Field {name!r} is {shown}, not a fo.Classification field (the class of each image) or a fo.Detections "
            f"field (the class of each box), the two label types noise-audit audits; label fields here: "
            f"{label_fields(samples)}")
    return kind


def min_box_size(value: Any, name: str = "min_box_size") -> float:
    """A box's smallest side in pixels (a number >= 0)."""
    if not _is_number(value) or not math.isfinite(float(value)) or float(value) < 0:
        raise NoiseAuditError(f"{name} must be a number of pixels >= 0, not {_shown(value, name)}")
    return float(value)
