"""Inject label flips with known truth, to measure how well audits find them.

Four strategies:

- ``uniform``: ``fraction`` of the samples, chosen at random, get a random other
  class (symmetric noise).
- ``pair``: class-conditional noise; classes are paired in a seeded cycle
  ``a -> b`` and ``fraction`` of each class is flipped to its partner.
- ``confusion``: instance-dependent noise that looks like human mistakes: a
  sample is chosen with probability proportional to how likely a reference
  model (the out-of-sample predictions of an audit of the clean labels, field
  ``{key}_prediction``) finds its most likely *wrong* class, and gets that
  class. Ambiguous images are mislabeled more often, and always as what
  they resemble.
- ``influential``: the seed notebook's adversarial choice: per class, the
  ``fraction`` of samples with the highest average influence from an earlier
  audit get a random other class. These are the samples the model leans on most,
  so their flips hurt most and are hardest to spot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np

import fiftyone as fo

from noise_audit import validation
from noise_audit.core.data import read_labels
from noise_audit.errors import NoiseAuditError
from noise_audit.signals import BY_NAME, signal_of_field
from noise_audit.store.fields import check_writable, dataset_lock, declare_field, field_info, has_role, is_own_field, write_values
from noise_audit.core.flips import STRATEGIES, choose_flips
from noise_audit.object_noise import OBJECTS_ROLE, inject_object_noise

if TYPE_CHECKING:
    from fiftyone.core.collections import SampleCollection
    from fiftyone.core.dataset import Dataset


def _find_influence_field(dataset: Dataset) -> str:
    fields = [
        n
        for n in dataset.get_field_schema()
        if signal_of_field(n) is BY_NAME["average_influence"]
        and is_own_field(dataset, n)
        and not n.startswith(("noise_audit_tmp_", "noise_audit_old_"))  # an audit being written
    ]
    if len(fields) != 1:
        raise NoiseAuditError(
            "strategy='influential' needs an audit's average influence: pass "
            f"influence_field= (candidates: {fields})"
        )
    return fields[0]


NOISY_ROLE, FLAG_ROLE = "noise:noisy", "noise:flag"  # info.role of the two fields an injection writes


def default_noisy_field(label_field: str) -> str:
    """Where :func:`inject_label_noise` puts the noisy copy of ``label_field`` when
    ``noisy_field`` is not given (and where :func:`remove_label_noise` looks)."""
    return f"{label_field}_noisy"


def _legacy_noisy(info: dict[str, Any], field: Any) -> bool:  # written before roles: the copy is a Classification field
    return "source_field" in info and getattr(field, "document_type", None) is fo.Classification


def _legacy_flag(info: dict[str, Any], field: Any) -> bool:
    return "source_field" in info and isinstance(field, fo.BooleanField)


def check_targets(dataset: Dataset, label_field: str, noisy_field: str, flag_field: str) -> None:
    """Raises unless ``noisy_field`` and ``flag_field`` are two fields an
    injection may write: absent, or written by an injection for that same
    purpose (never a user's field, an audit's, or the other one's)."""
    if noisy_field == label_field or flag_field == label_field:
        raise NoiseAuditError("noisy_field and flag_field must differ from label_field")
    if noisy_field == flag_field:
        raise NoiseAuditError(f"noisy_field and flag_field must be two different fields, not both {noisy_field!r}")
    check_writable(dataset, [noisy_field], role=NOISY_ROLE, legacy=_legacy_noisy)
    check_writable(dataset, [flag_field], role=FLAG_ROLE, legacy=_legacy_flag)


def injected_fields(dataset: Dataset) -> dict[str, str]:
    """``{noisy field: its flag field}`` of the injections present on ``dataset``."""
    out: dict[str, str] = {}
    for name in dataset.get_field_schema():
        if has_role(dataset, name, NOISY_ROLE, _legacy_noisy):
            out[name] = cast("dict[str, Any]", field_info(dataset, name)).get("flag_field", "label_flipped")
    return out


def remove_label_noise(samples: SampleCollection, label_field: str = "ground_truth", noisy_field: str | None = None,
                       flag_field: str = "label_flipped") -> dict[str, list[str]]:
    """Undoes :func:`inject_label_noise`: deletes the noisy copy and the flag
    field it wrote, and nothing else.

    Refuses (before deleting anything) unless both fields exist and were
    written by an injection as, respectively, the noisy copy and the flag, and
    as one pair. An injection that replaced an earlier one into the same
    fields cannot bring that earlier one back: the fields are removed.

    Args:
        samples: the dataset (or a view of it) injected into.
        label_field: the clean label field the injection copied (names the
            default ``noisy_field``).
        noisy_field: the noisy copy (default ``f"{label_field}_noisy"``).
        flag_field: the flag field.

    Returns:
        ``{"removed": [noisy_field, flag_field]}``
    """
    dataset = samples._dataset
    noisy_field = noisy_field or default_noisy_field(label_field)
    if noisy_field == flag_field:
        raise NoiseAuditError(f"noisy_field and flag_field must be two different fields, not both {noisy_field!r}")
    with dataset_lock(dataset):
        schema = dataset.get_field_schema()
        if has_role(dataset, noisy_field, OBJECTS_ROLE):  # boxes: the flags are attributes of the copy's boxes
            dataset.delete_sample_fields([noisy_field])
            return {"removed": [noisy_field]}
        missing = [n for n in (noisy_field, flag_field) if n not in schema]
        if missing:
            raise NoiseAuditError(f"No injected label noise to remove: fields {missing} do not exist")
        wrong = [n for n, role, legacy in ((noisy_field, NOISY_ROLE, _legacy_noisy), (flag_field, FLAG_ROLE, _legacy_flag))
                 if not has_role(dataset, n, role, legacy)]
        if wrong:
            raise NoiseAuditError(f"Fields {wrong} were not written by inject_label_noise as the noisy copy and the "
                                  "flag (in that order); nothing removed")
        # both fields exist (checked above): their info is a dict
        noisy_info = cast("dict[str, Any]", field_info(dataset, noisy_field))
        flag_info = cast("dict[str, Any]", field_info(dataset, flag_field))
        if noisy_info.get("flag_field", flag_field) != flag_field or flag_info.get("noisy_field", noisy_field) != noisy_field:
            raise NoiseAuditError(f"{noisy_field!r} and {flag_field!r} were written by two different injections "
                                  f"({noisy_field!r} goes with {noisy_info.get('flag_field')!r}); nothing removed")
        dataset.delete_sample_fields([noisy_field, flag_field])
    return {"removed": [noisy_field, flag_field]}


def _reference_probs(dataset: Dataset, samples: SampleCollection, prediction_field: str | None,
                     all_classes: list[str]) -> np.ndarray:
    """Out-of-sample class probabilities of an earlier audit, in ``all_classes`` order."""
    from scipy.special import softmax

    if prediction_field is None:
        found = [n for n in dataset.get_field_schema() if n.endswith("_prediction") and is_own_field(dataset, n)
                 and not n.startswith(("noise_audit_tmp_", "noise_audit_old_"))]
        if len(found) != 1:
            raise NoiseAuditError("strategy='confusion' needs the out-of-sample predictions of an audit of the clean "
                                  f"labels: pass prediction_field= (candidates: {found})")
        prediction_field = found[0]
    preds = samples.values(prediction_field)
    if any(p is None or p.logits is None for p in preds):
        raise NoiseAuditError(f"{prediction_field!r} has no logits for some samples: audit the clean labels first")
    audit_classes = dataset.get_field(prediction_field).info.get("classes") or sorted(all_classes)
    missing = [c for c in all_classes if c not in audit_classes]
    if missing or len(audit_classes) != len(preds[0].logits):
        raise NoiseAuditError(f"{prediction_field!r} was computed for other classes than {all_classes}")
    logits = np.array([p.logits for p in preds], dtype=float)[:, [audit_classes.index(c) for c in all_classes]]
    return softmax(logits, axis=1)


def inject_label_noise(
    samples: SampleCollection,
    label_field: str = "ground_truth",
    fraction: float = 0.1,
    seed: int = 0,
    noisy_field: str | None = None,
    flag_field: str = "label_flipped",
    strategy: str = "uniform",
    influence_field: str | None = None,
    prediction_field: str | None = None,
) -> dict[str, Any]:
    """Writes a copy of the labels with a known share of them flipped.

    The copy goes to ``noisy_field`` (default ``f"{label_field}_noisy"``) for
    every sample of the dataset; only samples of ``samples`` (a dataset or a view,
    e.g. the ``train`` split) are flipped. ``flag_field`` records the truth
    (``True`` = flipped). ``label_field`` is never modified.

    Args:
        samples: a FiftyOne dataset or view; flips happen only inside it.
        label_field: the clean ``fo.Classification`` field.
        fraction: share of ``samples`` to flip, a number in ``[0, 1)``; a
            string such as ``"0.1"`` is an error, not converted.
        seed: random seed; injection is deterministic for a seed.
        noisy_field: where the noisy copy goes.

    A ``fo.Detections`` field gets its boxes' classes flipped instead
    (``uniform``, ``pair``, ``confusion``; see :mod:`noise_audit.object_noise`):
    the copy is a ``Detections`` field whose boxes carry the attribute
    ``flag_field``, and the returned counts are of boxes.
        flag_field: boolean field: was this sample's label flipped?
        strategy: ``"uniform"``, ``"pair"``, ``"confusion"`` or ``"influential"``.
        influence_field: for ``influential``, the average-influence field of an
            earlier audit (found automatically when there is just one).
        prediction_field: for ``confusion``, the out-of-sample prediction field
            (``{key}_prediction``, with logits) of an earlier audit of the
            clean labels (found automatically when there is just one).

    Returns:
        a dict with the field names, the number flipped and the flipped ids.
    """
    if strategy not in STRATEGIES:
        raise NoiseAuditError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
    fraction, seed = validation.fraction(fraction), validation.seed(seed)
    noisy_field = noisy_field or default_noisy_field(label_field)
    if noisy_field == label_field or flag_field == label_field:
        raise NoiseAuditError("noisy_field and flag_field must differ from label_field")
    validation.non_empty(samples)
    if validation.label_field_kind(samples, label_field) == "detections":  # flips per box: object_noise.py
        return inject_object_noise(samples, label_field, fraction, seed, noisy_field, flag_field, strategy,
                                   prediction_field)
    data = read_labels(samples, label_field)
    dataset = samples._dataset
    check_targets(dataset, label_field, noisy_field, flag_field)

    influence = None
    if strategy == "influential":
        influence_field = influence_field or _find_influence_field(dataset)
        influence = np.array(samples.values(influence_field), dtype=float)
        if np.isnan(influence).any() or len(influence) != len(data):
            raise NoiseAuditError(f"{influence_field!r} is missing for some samples")

    all_classes = sorted(set(dataset.distinct(f"{label_field}.label")))
    # Index classes over the whole dataset, so flips can reach classes absent here.
    remap = np.array([all_classes.index(c) for c in data.classes])
    labels = remap[data.labels]
    reference = _reference_probs(dataset, samples, prediction_field, all_classes) if strategy == "confusion" else None
    idx, new = choose_flips(labels, len(all_classes), fraction, strategy, seed, influence, reference)

    all_ids, all_labels = dataset.values(["id", label_field])
    noisy: dict[str, Any] = {i: (lab.copy() if lab is not None else None) for i, lab in zip(all_ids, all_labels)}
    for i, c in zip(idx, new):
        noisy[data.ids[i]].label = all_classes[c]
    flipped_ids = set(data.ids[idx].tolist())
    info: dict[str, Any] = dict(source_field=label_field, strategy=strategy, fraction=fraction, seed=seed,
                noisy_field=noisy_field, flag_field=flag_field)
    with dataset_lock(dataset):  # schema changes one process at a time, from the stored schema
        check_targets(dataset, label_field, noisy_field, flag_field)
        declare_field(dataset, noisy_field, fo.EmbeddedDocumentField, fo.Classification, role=NOISY_ROLE, **info)
        declare_field(dataset, flag_field, fo.BooleanField, role=FLAG_ROLE, **info)
    write_values(dataset, noisy_field, list(noisy), list(noisy.values()))
    write_values(dataset, flag_field, all_ids, [i in flipped_ids for i in all_ids])
    return {
        "noisy_field": noisy_field,
        "flag_field": flag_field,
        "strategy": strategy,
        "num_flipped": len(idx),
        "num_samples": len(data),
        "flipped_ids": sorted(flipped_ids),
    }
