"""Inject label flips with known truth, to measure how well audits find them.

Three strategies:

- ``uniform``: ``fraction`` of the samples, chosen at random, get a random other
  class (symmetric noise).
- ``pair``: class-conditional noise; classes are paired in a seeded cycle
  ``a -> b`` and ``fraction`` of each class is flipped to its partner.
- ``influential``: the seed notebook's adversarial choice: per class, the
  ``fraction`` of samples with the highest average influence from an earlier
  audit get a random other class. These are the samples the model leans on most,
  so their flips hurt most and are hardest to spot.
"""

from __future__ import annotations

import numpy as np

import fiftyone as fo

from .data import read_labels
from .errors import NoiseAuditError
from .fields import check_writable, declare_field, is_own_field, write_values
from .flips import STRATEGIES, choose_flips


def _find_influence_field(dataset):
    fields = [
        n
        for n in dataset.get_field_schema()
        if n.endswith("_influence")
        and not n.endswith("_self_influence")
        and is_own_field(dataset, n)
    ]
    if len(fields) != 1:
        raise NoiseAuditError(
            "strategy='influential' needs an audit's average influence: pass "
            f"influence_field= (candidates: {fields})"
        )
    return fields[0]


def inject_label_noise(
    samples,
    label_field="ground_truth",
    fraction=0.1,
    seed=0,
    noisy_field=None,
    flag_field="label_flipped",
    strategy="uniform",
    influence_field=None,
):
    """Writes a copy of the labels with a known share of them flipped.

    The copy goes to ``noisy_field`` (default ``f"{label_field}_noisy"``) for
    every sample of the dataset; only samples of ``samples`` (a dataset or a view,
    e.g. the ``train`` split) are flipped. ``flag_field`` records the truth
    (``True`` = flipped). ``label_field`` is never modified.

    Args:
        samples: a FiftyOne dataset or view; flips happen only inside it.
        label_field: the clean ``fo.Classification`` field.
        fraction: share of ``samples`` to flip, in ``[0, 1)``.
        seed: random seed; injection is deterministic for a seed.
        noisy_field: where the noisy copy goes.
        flag_field: boolean field: was this sample's label flipped?
        strategy: ``"uniform"``, ``"pair"`` or ``"influential"``.
        influence_field: for ``influential``, the average-influence field of an
            earlier audit (found automatically when there is just one).

    Returns:
        a dict with the field names, the number flipped and the flipped ids.
    """
    if strategy not in STRATEGIES:
        raise NoiseAuditError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
    if not 0 <= fraction < 1:
        raise NoiseAuditError(f"fraction must be in [0, 1), not {fraction}")
    noisy_field = noisy_field or f"{label_field}_noisy"
    if noisy_field == label_field or flag_field == label_field:
        raise NoiseAuditError("noisy_field and flag_field must differ from label_field")
    data = read_labels(samples, label_field)
    dataset = samples._dataset
    check_writable(dataset, [noisy_field, flag_field])

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
    idx, new = choose_flips(labels, len(all_classes), fraction, strategy, seed, influence)

    all_ids, all_labels = dataset.values(["id", label_field])
    noisy = {i: (lab.copy() if lab is not None else None) for i, lab in zip(all_ids, all_labels)}
    for i, c in zip(idx, new):
        noisy[data.ids[i]].label = all_classes[c]
    flipped_ids = set(data.ids[idx].tolist())
    info = dict(source_field=label_field, strategy=strategy, fraction=fraction, seed=seed)
    declare_field(dataset, noisy_field, fo.EmbeddedDocumentField, fo.Classification, **info)
    declare_field(dataset, flag_field, fo.BooleanField, **info)
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
