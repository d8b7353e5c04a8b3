"""Label flips with known truth on the boxes of a ``Detections`` field.

``na.inject_label_noise(dataset, "ground_truth", ...)`` on a ``fo.Detections``
field comes here (:func:`noise_audit.noise.inject_label_noise` dispatches on
the field's type). The noisy copy ``{label_field}_noisy`` is a ``Detections``
field with every box of ``label_field`` (same ids, so an audit's attributes
and the flips meet box by box), a share of the boxes of ``samples`` given
another class by the same rules as images (:func:`noise_audit.core.flips.choose_flips`:
``uniform``, ``pair``, ``confusion``), and the truth on every box of the copy:
the attribute ``flag_field`` (``label_flipped``, ``True`` = flipped), declared
on the copy's boxes. ``label_field`` itself is never modified.

For ``confusion`` the reference model is an earlier audit of the clean boxes
(its out-of-sample probabilities, kept in its results; ``prediction_field``
names its key, found automatically when there is one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

import fiftyone as fo

from noise_audit import validation
from noise_audit.core.flips import choose_flips
from noise_audit.errors import NoiseAuditError
from noise_audit.store.fields import OWNER, check_writable, dataset_lock, declare_field, write_values

if TYPE_CHECKING:
    from fiftyone.core.collections import SampleCollection
    from fiftyone.core.dataset import Dataset

OBJECT_STRATEGIES = ("uniform", "pair", "confusion")
OBJECTS_ROLE = "noise:noisy_objects"  # info.role of a noisy copy of a Detections field


def _reference(dataset: Dataset, label_field: str, key: str | None, ids: list[str], classes: list[str]) -> np.ndarray:
    """Out-of-sample probabilities of the boxes ``ids`` from an object audit of ``label_field``."""
    from noise_audit.store.runs import list_audits, load_audit

    if key is None:
        found = [k for k in list_audits(dataset)
                 if getattr(dataset.get_run_info(k).config, "object_field", None) == label_field]
        if len(found) != 1:
            raise NoiseAuditError("strategy='confusion' needs an audit of the clean boxes: pass prediction_field= "
                                  f"(the audit's key; candidates: {found})")
        key = found[0]
    _, results = load_audit(dataset, key)
    if getattr(results.config, "object_field", None) != label_field:
        raise NoiseAuditError(f"{key!r} is not an audit of the boxes of {label_field!r}")
    row = {i: r for r, i in enumerate(results.ids)}
    missing = [i for i in ids if i not in row]
    if missing or any(c not in results.classes for c in classes):
        raise NoiseAuditError(f"The audit {key!r} did not predict every box and class here ({len(missing)} boxes "
                              "missing): audit the clean boxes first")
    probs = results.predictions[[row[i] for i in ids]]
    return probs[:, [list(results.classes).index(c) for c in classes]]


def inject_object_noise(samples: SampleCollection, label_field: str, fraction: float, seed: int, noisy_field: str,
                        flag_field: str, strategy: str, prediction_field: str | None = None) -> dict[str, Any]:
    """See the module doc; returns what :func:`noise_audit.noise.inject_label_noise` returns, per box."""
    if strategy not in OBJECT_STRATEGIES:
        raise NoiseAuditError(f"strategy for a Detections field must be one of {OBJECT_STRATEGIES}, not {strategy!r}")
    fraction, seed = validation.fraction(fraction), validation.seed(seed)
    if noisy_field == label_field or flag_field == label_field:
        raise NoiseAuditError("noisy_field and flag_field must differ from label_field")
    validation.non_empty(samples)
    dataset = samples._dataset
    check_writable(dataset, [noisy_field], role=OBJECTS_ROLE)
    sids, dids, names = samples.values(["id", f"{label_field}.detections.id", f"{label_field}.detections.label"])
    ids = [d for ds in dids for d in (ds or [])]
    labels = [n for ns in names for n in (ns or [])]
    keep = [k for k, n in enumerate(labels) if n is not None]
    ids, labels = [ids[k] for k in keep], [labels[k] for k in keep]
    if not ids:
        raise NoiseAuditError(f"No labelled box in {label_field!r} to flip")
    all_classes = sorted({c for c in dataset.distinct(f"{label_field}.detections.label") if c is not None})
    if len(all_classes) < 2:
        raise NoiseAuditError(f"Need at least two classes in {label_field!r}; found {all_classes}")
    y = np.array([all_classes.index(c) for c in labels])
    reference = _reference(dataset, label_field, prediction_field, ids, all_classes) if strategy == "confusion" else None
    idx, new = choose_flips(y, len(all_classes), fraction, strategy, seed, None, reference)
    flipped = {ids[i]: all_classes[c] for i, c in zip(idx, new)}

    flat = dataset.get_field_schema(flat=True)
    prefix = f"{label_field}.detections."
    attrs = {p[len(prefix):]: f for p, f in flat.items() if p.startswith(prefix) and "." not in p[len(prefix):]}
    ours = {a for a, f in attrs.items() if (getattr(f, "info", None) or {}).get("created_by") == OWNER}
    all_ids, all_dets = dataset.values(["id", label_field])
    noisy: list[Any] = []
    for dets in all_dets:
        if dets is None:
            noisy.append(None)
            continue
        boxes = []
        for orig in dets.detections:  # the same boxes (ids too), without an audit's attributes
            d = fo.Detection.from_dict({k: v for k, v in orig.to_dict().items() if k not in ours})
            d[flag_field] = orig.id in flipped
            if orig.id in flipped:
                d.label = flipped[orig.id]
            boxes.append(d)
        noisy.append(fo.Detections(detections=boxes))
    info: dict[str, Any] = dict(source_field=label_field, strategy=strategy, fraction=fraction, seed=seed,
                                noisy_field=noisy_field, flag_field=flag_field, objects=True)
    with dataset_lock(dataset):
        check_writable(dataset, [noisy_field], role=OBJECTS_ROLE)
        declare_field(dataset, noisy_field, fo.EmbeddedDocumentField, fo.Detections, role=OBJECTS_ROLE, **info)
        for attr, f in attrs.items():  # the boxes' own attributes keep their types (e.g. a VectorField)
            if attr not in ours and dataset.get_field(f"{noisy_field}.detections.{attr}") is None:
                dataset.add_sample_field(f"{noisy_field}.detections.{attr}", type(f))
    write_values(dataset, noisy_field, all_ids, noisy)
    with dataset_lock(dataset):
        path = f"{noisy_field}.detections.{flag_field}"
        if dataset.get_field(path) is None:
            dataset.add_sample_field(path, fo.BooleanField)
        field = dataset.get_field(path)
        field.info = {"created_by": OWNER, "role": "noise:flag", **info}
        field.save()
    return {"noisy_field": noisy_field, "flag_field": f"{noisy_field}.detections.{flag_field}", "strategy": strategy,
            "num_flipped": len(idx), "num_samples": len(ids), "num_images": len(sids), "flipped_ids": sorted(flipped)}
