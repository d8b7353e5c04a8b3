"""Stage 1, data: import image folders and read a view's labels into arrays.

Everything downstream works on :class:`LabeledImages`, plain arrays taken from a
FiftyOne collection once, so that the model stages never talk to the database.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

import fiftyone as fo
import fiftyone.types as fot

from noise_audit import validation
from noise_audit.errors import NoiseAuditError

if TYPE_CHECKING:
    from fiftyone.core.collections import SampleCollection
    from fiftyone.core.dataset import Dataset

SPLIT_TAGS = ("train", "val", "test")
_log = logging.getLogger(__name__)


def load_image_folder(root: str | os.PathLike[str], name: str | None = None, overwrite: bool = False,
                      splits: Sequence[str] | None = None, classes: Sequence[str] | None = None) -> Dataset:
    """Imports an ``ImageClassificationDirectoryTree`` into a FiftyOne dataset.

    Two layouts are understood:

    - ``root/<label>/<image>``: one split, no tags;
    - ``root/<split>/<label>/<image>`` with ``<split>`` in ``train``, ``val``,
      ``test``: each split is imported with FiftyOne's importer and its samples
      are tagged with the split's name.

    Args:
        root: the folder.
        name: the dataset name; default the folder's name.
        overwrite: replace an existing dataset of that name.
        splits: only these split folders (default all that exist).
        classes: only these class folders (default all).

    Returns:
        a :class:`fiftyone.core.dataset.Dataset` with labels in ``ground_truth``.
    """
    root = os.path.abspath(os.path.expanduser(str(root)))
    if not os.path.isdir(root):
        raise NoiseAuditError(f"Image folder not found: {root}")
    name = name or os.path.basename(root.rstrip(os.sep))
    present = [s for s in SPLIT_TAGS if os.path.isdir(os.path.join(root, s))]
    if splits is not None:
        missing = [s for s in splits if s not in present]
        if missing:
            raise NoiseAuditError(f"Split folders not found under {root}: {missing}")
        present = list(splits)
    if fo.dataset_exists(name) and not overwrite:
        raise NoiseAuditError(
            f"Dataset {name!r} exists; pass overwrite=True to replace it"
        )
    dataset = fo.Dataset(name, overwrite=overwrite, persistent=True)
    if present:
        for split in present:
            dataset.add_dir(
                dataset_dir=os.path.join(root, split),
                dataset_type=fot.ImageClassificationDirectoryTree,
                label_field="ground_truth",
                tags=split,
                classes=classes,
            )
    else:
        dataset.add_dir(
            dataset_dir=root,
            dataset_type=fot.ImageClassificationDirectoryTree,
            label_field="ground_truth",
            classes=classes,
        )
    if len(dataset) == 0:
        dataset.delete()
        raise NoiseAuditError(f"No images found under {root}")
    _warn_skipped(root, present or [""], classes)
    return dataset


def skipped_images(folder: str, classes: Sequence[str] | None = None) -> list[str]:
    """Image files under ``folder`` (a class tree) that FiftyOne's importer does not import.

    ``ImageClassificationDirectoryTree`` silently skips hidden files and
    folders (names starting with ``.``, such as a class folder ``.._x``) and
    files beside the class folders (no class to give them). Files whose
    extension Pillow does not know are not listed (``.DS_Store``, notes).
    """
    from PIL import Image

    image_ext = set(Image.registered_extensions())
    skipped = []
    for parent, dirs, files in os.walk(folder):
        rel = os.path.relpath(parent, folder)
        parts = [] if rel == os.curdir else rel.split(os.sep)
        if classes is not None and parts and parts[0] not in classes:
            dirs[:] = []
            continue
        for name in files:
            if os.path.splitext(name)[1].lower() not in image_ext:
                continue
            if not parts or any(p.startswith(".") for p in parts + [name]):
                skipped.append(os.path.join(parent, name))
    return sorted(skipped)


def _warn_skipped(root, splits, classes):
    """One warning when the importer left image files out (see :func:`skipped_images`)."""
    skipped = [p for split in splits for p in skipped_images(os.path.join(root, split), classes)]
    if skipped:
        _log.warning("%d image files under %s were not imported: FiftyOne skips names that start with '.' and "
                     "files outside a class folder; rename or move them, e.g. %s", len(skipped), root,
                     [os.path.relpath(p, root) for p in skipped[:3]])


@dataclass
class LabeledImages:
    """A view's samples as arrays, in the view's order."""

    ids: np.ndarray  # sample ids (str)
    filepaths: np.ndarray  # str
    labels: np.ndarray  # int class index
    classes: list[str]  # class names, sorted; labels index into it
    tags: list[list[str]]  # per-sample list of tags

    def __len__(self) -> int:
        return len(self.ids)


def classification_fields(samples: SampleCollection) -> list[str]:
    """Names of the top-level ``fo.Classification`` fields of a collection."""
    schema = samples.get_field_schema(embedded_doc_type=fo.Classification)
    return sorted(schema)


def read_labels(samples: SampleCollection, label_field: str, min_per_class: int = 1) -> LabeledImages:
    """Reads ids, paths and integer labels of a view, checking them first.

    Raises :class:`NoiseAuditError` for an empty view, a missing or
    non-``Classification`` field, unlabeled samples, fewer than two classes or a
    class with fewer than ``min_per_class`` samples.
    """
    validation.non_empty(samples)
    schema = samples.get_field_schema()
    if label_field not in schema:
        raise NoiseAuditError(
            f"Label field {label_field!r} not found; Classification fields here: "
            f"{classification_fields(samples)}"
        )
    field = schema[label_field]
    if getattr(field, "document_type", None) is not fo.Classification:
        raise NoiseAuditError(
            f"Field {label_field!r} is {type(field).__name__}"
            f"({cast(Any, getattr(field, 'document_type', None)).__name__ if getattr(field, 'document_type', None) else ''}"
            "),"
            f" not a fo.Classification field; Classification fields here: "
            f"{classification_fields(samples)}"
        )
    ids, paths, names, tags = samples.values(
        ["id", "filepath", f"{label_field}.label", "tags"]
    )
    unlabeled = [p for p, n in zip(paths, names) if n is None]
    if unlabeled:
        raise NoiseAuditError(
            f"{len(unlabeled)} samples have no {label_field!r} label, e.g. {unlabeled[:3]}"
        )
    classes = sorted(set(names))
    if len(classes) < 2:
        raise NoiseAuditError(
            f"Need at least two classes in {label_field!r}; found {classes}"
        )
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[n] for n in names], dtype=np.int64)
    counts = np.bincount(labels, minlength=len(classes))
    small = {classes[i]: int(c) for i, c in enumerate(counts) if c < min_per_class}
    if small:
        raise NoiseAuditError(
            f"Each class needs at least {min_per_class} samples for the "
            f"cross-validation folds; too few in {small}"
        )
    return LabeledImages(
        ids=np.array(ids),
        filepaths=np.array(paths),
        labels=labels,
        classes=classes,
        tags=list(tags),
    )
