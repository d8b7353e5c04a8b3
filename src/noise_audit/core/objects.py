"""Objects as rows: the boxes of a ``Detections`` field, read for an audit of their classes.

An audit of a ``fo.Detections`` field audits the class of every box: each
object is one row of the feature matrix, labelled with its ``label``. This
module owns what differs from an audit of images:

- **reading the objects** (:func:`read_objects`): ids, classes, the sample of
  each object and its tags; boxes that cannot be audited are skipped with one
  warning that counts them (:func:`check_boxes`): samples with an empty
  ``Detections``, boxes without a label, boxes not inside the image, boxes of
  zero area and boxes with a side under ``min_box_size`` pixels;
- **features of the boxes** through FiftyOne's own patch machinery
  (:func:`patch_features`): ``compute_patch_embeddings`` crops every box as
  FiftyOne's patches views do and a backbone embeds the crops
  (:func:`patch_embedder` wraps one as a FiftyOne model); or the vectors an
  attribute of every ``Detection`` already holds (:func:`attribute_vectors`,
  e.g. what ``compute_patch_embeddings(..., embeddings_field=...)`` stored);
- **whole images on one side** (:func:`object_split`, :func:`group_folds`):
  the held-out part is chosen by sample (its tag, a view of samples, or a
  seeded 10% of the samples), and the cross-validation folds are grouped by
  sample, so that boxes of one image are never both fitted and held out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from noise_audit import validation
from noise_audit.errors import NoiseAuditError

if TYPE_CHECKING:
    import torch
    from fiftyone.core.collections import SampleCollection

    from noise_audit.core.backbones import Backbone

_log = logging.getLogger(__name__)
EDGE_TOLERANCE = 1e-3  # relative coordinates: a box may pass the image's edge by this much (rounding)
DEFAULT_MIN_BOX_SIZE = 2.0  # pixels


@dataclass
class ObjectRows:
    """The audited objects, one row each, in the collection's order (samples, then boxes)."""

    ids: np.ndarray  # detection ids (str)
    sample_ids: np.ndarray  # the sample of each object (str)
    labels: np.ndarray  # int class index
    classes: list[str]
    tags: list[list[str]]  # the tags of each object's sample
    skipped: dict[str, int]  # reason -> count (see check_boxes)

    def __len__(self) -> int:
        return len(self.ids)


def _image_sizes(paths: Sequence[str], widths: Sequence[Any], heights: Sequence[Any]) -> list[tuple[int, int] | None]:
    """``(width, height)`` of each image: its metadata, else its file's header (nothing is written)."""
    from PIL import Image

    out: list[tuple[int, int] | None] = []
    for p, w, h in zip(paths, widths, heights):
        if w and h:
            out.append((int(w), int(h)))
            continue
        try:
            with Image.open(p) as img:
                out.append(img.size)
        except OSError:
            out.append(None)  # unreadable: decided by the features stage, which names it
    return out


def check_boxes(boxes: Sequence[Any], labels: Sequence[Any], size: tuple[int, int] | None,
                min_box_size: float) -> list[str | None]:
    """Per box ``None`` (audited) or why it is skipped: ``"unlabeled"``, ``"outside"``
    (not inside the image), ``"zero_area"`` or ``"small"`` (a side under ``min_box_size`` px)."""
    out: list[str | None] = []
    for box, label in zip(boxes, labels):
        if label is None:
            out.append("unlabeled")
            continue
        if box is None or len(box) != 4 or not all(np.isfinite(v) for v in box):
            out.append("zero_area")
            continue
        x, y, w, h = (float(v) for v in box)
        if w <= 0 or h <= 0 or (size is not None and (w * size[0] < 0.5 or h * size[1] < 0.5)):
            out.append("zero_area")
        elif x < -EDGE_TOLERANCE or y < -EDGE_TOLERANCE or x + w > 1 + EDGE_TOLERANCE or y + h > 1 + EDGE_TOLERANCE:
            out.append("outside")
        elif size is not None and min(w * size[0], h * size[1]) < min_box_size:
            out.append("small")
        else:
            out.append(None)
    return out


SKIP_REASONS = {"empty": "samples with an empty Detections", "unlabeled": "boxes without a label",
                "outside": "boxes not inside the image", "zero_area": "boxes of zero area",
                "small": "boxes with a side under {min} px (min_box_size)"}


def skipped_message(label_field: str, skipped: dict[str, int], n_objects: int, min_box_size: float) -> str | None:
    """The one warning line about skipped boxes, or None when nothing was skipped."""
    if not any(skipped.values()):
        return None
    parts = [f"{n} {SKIP_REASONS[r].format(min=f'{min_box_size:g}')}" for r, n in skipped.items() if n]
    return f"Skipped in {label_field!r} (audited {n_objects} boxes): " + ", ".join(parts)


def read_objects(samples: SampleCollection, label_field: str, min_box_size: float = DEFAULT_MIN_BOX_SIZE,
                 min_per_class: int = 1, warn: bool = True) -> ObjectRows:
    """The objects of ``label_field`` (a ``Detections`` field) that can be audited, as rows.

    Raises :class:`NoiseAuditError` when no box is left, when fewer than two
    classes are, or when a class has fewer than ``min_per_class`` boxes.
    Skipped boxes are counted in one warning (:func:`skipped_message`).
    """
    validation.non_empty(samples)
    min_box_size = validation.min_box_size(min_box_size)
    p = f"{label_field}.detections"
    sids, paths, tags, widths, heights, dids, names, boxes = samples.values(
        ["id", "filepath", "tags", "metadata.width", "metadata.height", f"{p}.id", f"{p}.label", f"{p}.bounding_box"])
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    sizes = _image_sizes(paths, widths, heights)
    rows: list[tuple[str, str, str, list[str]]] = []
    for sid, t, size, d_ids, d_names, d_boxes in zip(sids, tags, sizes, dids, names, boxes):
        if not d_ids:
            skipped["empty"] += 1
            continue
        for did, name, why in zip(d_ids, d_names, check_boxes(d_boxes, d_names, size, min_box_size)):
            if why is None:
                rows.append((did, sid, name, list(t)))
            else:
                skipped[why] += 1
    message = skipped_message(label_field, skipped, len(rows), min_box_size)
    if message and warn:
        _log.warning(message)
    if not rows:
        raise NoiseAuditError(f"No box of {label_field!r} can be audited" + (f" ({message})" if message else ""))
    classes = sorted({r[2] for r in rows})
    if len(classes) < 2:
        raise NoiseAuditError(f"Need at least two classes in {label_field!r}; found {classes}")
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[r[2]] for r in rows], dtype=np.int64)
    counts = np.bincount(labels, minlength=len(classes))
    small = {classes[i]: int(c) for i, c in enumerate(counts) if c < min_per_class}
    if small:
        raise NoiseAuditError(f"Each class needs at least {min_per_class} boxes for the cross-validation folds; "
                              f"too few in {small}")
    return ObjectRows(ids=np.array([r[0] for r in rows]), sample_ids=np.array([r[1] for r in rows]), labels=labels,
                      classes=classes, tags=[r[3] for r in rows], skipped=skipped)


# -- features of the boxes ------------------------------------------------------


def patch_embedder(backbone: Backbone, device: torch.device, batch_size: int = 64) -> Any:
    """A :class:`~noise_audit.core.backbones.Backbone` as a FiftyOne embeddings model (see
    :class:`_PatchEmbedder`), for ``compute_patch_embeddings``."""
    import fiftyone.core.models as fom

    class _Model(_PatchEmbedder, fom.Model, fom.EmbeddingsMixin):
        pass

    return _Model(backbone, device, batch_size)


class _PatchEmbedder:
    """Receives each image's crops (uint8 ``(h, w, 3)`` arrays, cut by FiftyOne's
    ``extract_patch``) and returns their features."""

    media_type = "image"
    ragged_batches = True
    transforms = None
    preprocess = False
    has_embeddings = True
    has_logits = False

    def __init__(self, backbone: Backbone, device: torch.device, batch_size: int = 64) -> None:
        self.backbone, self.device, self.batch_size = backbone, device, batch_size

    def __enter__(self) -> _PatchEmbedder:
        return self

    def __exit__(self, *args: Any) -> None:
        return None

    def get_embeddings(self) -> Any:
        raise NotImplementedError("embed_all returns the embeddings")

    def _input(self, crop: np.ndarray) -> Any:
        import torch
        from PIL import Image

        crop = np.ascontiguousarray(crop[..., :3] if crop.ndim == 3 else np.stack([crop] * 3, -1))
        if self.backbone.decode == "tensor":
            return self.backbone.transform(torch.from_numpy(crop).permute(2, 0, 1).contiguous())
        if self.backbone.decode == "numpy":
            return self.backbone.transform(crop)
        return self.backbone.transform(Image.fromarray(crop))

    def embed_all(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(crops), self.batch_size):
            batch = torch.stack([self._input(c) for c in crops[i:i + self.batch_size]])
            out.append(self.backbone.embed(batch, self.device))
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)

    def embed(self, crop: np.ndarray) -> np.ndarray:
        return self.embed_all([crop])[0]

    def predict(self, arg: Any) -> Any:
        raise NotImplementedError("PatchEmbedder only computes embeddings")

    def predict_all(self, args: Any) -> Any:
        raise NotImplementedError("PatchEmbedder only computes embeddings")


def audited_view(samples: SampleCollection, label_field: str, rows: ObjectRows) -> SampleCollection:
    """``samples`` with only the audited boxes of ``label_field`` (and only samples that have one)."""
    return samples.select_labels(ids=rows.ids.tolist(), fields=label_field)


def _in_row_order(view: SampleCollection, label_field: str, rows: ObjectRows, per_sample: dict[str, Any],
                  what: str) -> list[Any]:
    sids, dids = view.values(["id", f"{label_field}.detections.id"])
    by_id: dict[str, Any] = {}
    for sid, ids in zip(sids, dids):
        values = per_sample.get(sid)
        if values is None or len(values) != len(ids or []):
            raise NoiseAuditError(f"FiftyOne returned no {what} for the boxes of sample {sid}")
        by_id.update(zip(ids, values))
    return [by_id[i] for i in rows.ids]


def patch_features(samples: SampleCollection, label_field: str, rows: ObjectRows, backbone: Backbone,
                   device: torch.device, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Features ``(n_objects, d)`` of the audited boxes, in ``rows``' order.

    FiftyOne crops the boxes (``compute_patch_embeddings``, the crops its
    patches views show) and :class:`PatchEmbedder` runs ``backbone`` on them.
    """
    view = audited_view(samples, label_field, rows)
    model = patch_embedder(backbone, device, batch_size)
    out = view.compute_patch_embeddings(model, label_field, handle_missing="skip", skip_failures=False,
                                        progress=progress)
    per_sample = {sid: np.asarray(v) for sid, v in (out or {}).items() if v is not None}
    return np.asarray(_in_row_order(view, label_field, rows, per_sample, "features"), dtype=np.float32)


def attribute_vectors(samples: SampleCollection, label_field: str, rows: ObjectRows, attribute: str) -> np.ndarray:
    """The vectors the attribute ``attribute`` of every audited box holds, in ``rows``' order."""
    view = audited_view(samples, label_field, rows)
    sids, values = view.values(["id", f"{label_field}.detections.{attribute}"])
    per_sample = dict(zip(sids, values))
    ordered = _in_row_order(view, label_field, rows, per_sample, f"attribute {attribute!r}")
    return validation.embedding_vectors(f"{label_field}.detections.{attribute}", rows.ids, ordered)


# -- whole images on one side ---------------------------------------------------


def object_split(samples: SampleCollection, rows: ObjectRows, test: Any, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Boolean mask of held-out objects (by their sample) and a description of the split."""
    from sklearn.model_selection import GroupShuffleSplit

    if isinstance(test, str):
        mask = np.array([test in t for t in rows.tags])
        desc: dict[str, Any] = {"kind": "tag", "tag": test}
    elif test is not None:
        test_ids = set(test.values("id"))
        mask = np.array([s in test_ids for s in rows.sample_ids])
        desc = {"kind": "view", "n": int(len(test_ids))}
    else:
        mask = np.array([("val" in t) or ("test" in t) for t in rows.tags])
        desc = {"kind": "tags", "tags": ["val", "test"]}
        if not mask.any() or mask.all():
            split = GroupShuffleSplit(n_splits=1, test_size=0.1, random_state=seed)
            _, held = next(split.split(rows.ids, rows.labels, groups=rows.sample_ids))
            mask = np.zeros(len(rows), dtype=bool)
            mask[held] = True
            desc = {"kind": "sample_split", "fraction": 0.1, "seed": seed}
    if not mask.any():
        raise NoiseAuditError(f"The test set {test!r} has no boxes in the audited view")
    if mask.all():
        raise NoiseAuditError("Every box is in the test set; nothing is left to train on")
    if len(np.unique(rows.labels[~mask])) < 2:
        raise NoiseAuditError("The training part has fewer than two classes")
    return mask, desc


def group_folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each object's cross-validation fold, stratified by class, all boxes of a sample in one fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    if n_groups < folds:
        raise NoiseAuditError(f"{folds} folds need at least {folds} images with boxes; found {n_groups}")
    out = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    for k, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        out[held] = k
    return out
