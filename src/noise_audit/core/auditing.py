"""The audit: data -> features -> head -> influence -> scores -> fields and run.

Design for scoring every sample, held-out ones too:

- one head is fit on the ``train`` part; all influence quantities use it;
- ``train`` samples: average influence on the held-out ``test`` set;
  ``loo_loss`` = loss + self-influence / n_train (first-order leave-one-out);
- ``test`` samples (roles swapped): average influence on the ``train`` set,
  i.e. whether adding the sample to training would help fit the training
  data; their loss under the head is already out-of-sample, so ``loo_loss``
  is that loss;
- label quality: K-fold out-of-sample probabilities over the whole view, so
  every sample is predicted by a head that never saw it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Optional, cast

import numpy as np
from scipy.special import softmax
from sklearn.model_selection import train_test_split

from noise_audit import validation
from noise_audit._version import __version__
from noise_audit.core import embeddings, finetune, noise_model, object_audit, objects, pipeline, scores
from noise_audit.core import suggestions, weight_probe
from noise_audit.core import warm_start as warm
from noise_audit.core.backbones import Backbone
from noise_audit.core.features import get_backbone
from noise_audit.core.feature_cache import default_cache_dir
from noise_audit.core import head as heads
from noise_audit.core import influence as infl
from noise_audit.core.stages import STAGES, _Clock, _features, _Features, _head_and_influence, _results_doc, _standardized  # noqa: F401
from noise_audit.core.data import read_labels
from noise_audit.errors import NoiseAuditError
from noise_audit.signals import FIELD_SIGNALS
from noise_audit.store.fields import classification_doc
from noise_audit.store.labels import labels_fingerprint, warn_if_labels_changed
from noise_audit.store.ownership import audit_fields
from noise_audit.store.review import carried_decisions
from noise_audit.store.runs import AuditResults, check_key  # noqa: F401 (AuditResults re-exported)
from noise_audit.store.writes import write_audit

if TYPE_CHECKING:
    import torch
    from dask.distributed import Client
    from fiftyone.core.collections import SampleCollection
    from PIL import Image

DEFAULT_L2 = 3.0


# AuditResults is the FiftyOne run results class of an audit (see store/runs.py); the
# one na.audit returns is the one load_audit and dataset.load_run_results give.


def _resolve_test(samples, data, test, seed):
    """Boolean mask of held-out samples and a description of the split."""
    if isinstance(test, str):
        mask = np.array([test in t for t in data.tags])
        desc = {"kind": "tag", "tag": test}
    elif test is not None:
        test_ids = set(test.values("id"))
        mask = np.array([i in test_ids for i in data.ids])
        desc = {"kind": "view", "n": int(mask.sum())}
    else:
        mask = np.array([("val" in t) or ("test" in t) for t in data.tags])
        desc = {"kind": "tags", "tags": ["val", "test"]}
        if not mask.any() or mask.all():
            idx = np.arange(len(data))
            _, held = train_test_split(idx, test_size=0.1, stratify=data.labels, random_state=seed)
            mask = np.zeros(len(data), dtype=bool)
            mask[held] = True
            desc = {"kind": "stratified_split", "fraction": 0.1, "seed": seed}
    if not mask.any():
        raise NoiseAuditError(f"The test set {test!r} has no samples in the audited view")
    if mask.all():
        raise NoiseAuditError("Every sample is in the test set; nothing is left to train on")
    if len(np.unique(data.labels[~mask])) < 2:
        raise NoiseAuditError("The training part has fewer than two classes")
    return mask, desc


def build_backbone(backbone: str | torch.nn.Module | Backbone, weights: str | os.PathLike[str] | None,
                   transform: Callable[[Image.Image], torch.Tensor] | None, image_size: int, seed: int,
                   train_last_block: bool, precision: str = "fp32", device: torch.device | str | None = None,
                   ) -> tuple[Backbone, Callable[[int], torch.nn.Module] | None]:
    """``(feature extractor, make_head or None)`` for an audit's settings."""
    bb = get_backbone(backbone, weights, transform, image_size, seed, precision=precision, device=device)
    if not train_last_block:
        return bb, None
    trunk, make_head = finetune.trunk_and_block(bb)
    trunk_bb = Backbone(name=bb.name, module=trunk, transform=bb.transform, cache_id=f"{bb.cache_id}-trunk",
                        precision=bb.precision, decode=bb.decode)
    return trunk_bb, make_head


def head_file(cache_dir: str | Literal[False] | None, dataset_name: str, key: str) -> str:
    """Where the weights of a fine-tuned last block are kept (too big for a run doc)."""
    import hashlib

    root = cache_dir if isinstance(cache_dir, str) else default_cache_dir()
    name = hashlib.sha1(f"{dataset_name}/{key}".encode()).hexdigest()[:16]
    return os.path.join(root, "heads", f"{name}.pt")


def audit(
    samples: SampleCollection,
    label_field: str = "ground_truth",
    test: str | SampleCollection | None = None,
    key: str = "noise_audit",
    backbone: str | torch.nn.Module = "efficientnet_lite0",
    weights: str | os.PathLike[str] | None = None,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
    image_size: int = 224,
    precision: str = "fp32",
    method: str = "auto",
    regularization: float | str = DEFAULT_L2,
    folds: int = 5,
    seed: int = 0,
    batch_size: int = 64,
    cache_dir: str | Literal[False] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    on_progress: Callable[[str, float], Any] | None = None,
    train_last_block: bool = False,
    device: torch.device | str | None = "auto",
    client: Client | None = None,
    warm_start: str | bool | None = None,
    embeddings_field: str | None = None,
    min_box_size: float = objects.DEFAULT_MIN_BOX_SIZE,
    influence_weight: float | str = "auto",
) -> AuditResults:
    """Audits a FiftyOne image-classification view for mislabeled samples.

    Fine-tunes a softmax head on frozen backbone features, computes pyDVL
    influence functions and cleanlab's out-of-sample label quality, combines
    them into a corruption score (see :mod:`noise_audit.core.scores`), and writes
    ``{key}_influence``, ``{key}_self_influence``, ``{key}_label_quality``,
    ``{key}_corruption_score``, ``{key}_suspect``, ``{key}_prediction`` and
    ``{key}_suggested_label`` (:mod:`noise_audit.core.suggestions`) to every
    sample of ``samples``, the empty ``{key}_review`` and ``{key}_annotation``
    of the review loop (:mod:`noise_audit.reviewing`; an audit replacing one
    under the same key keeps the decisions about unchanged labels), plus a
    FiftyOne run ``key``. Nothing is written unless the whole audit succeeds.

    Args:
        samples: a FiftyOne dataset or view of image samples.
        label_field: the ``fo.Classification`` field to audit.
        test: held-out samples for average influence: a view, a tag, or
            ``None`` for the samples tagged ``val``/``test`` (else a seeded,
            stratified 10% split).
        key: run key and field prefix.
        backbone: ``"efficientnet_lite0"``, ``"resnet18"`` or a
            ``torch.nn.Module`` (then ``transform`` is required).
        weights: backbone weights: ``None`` (default for the backbone),
            ``"imagenet"`` or a local state-dict path.
        transform: PIL image -> tensor, for custom backbones.
        image_size: input side length for the named backbones.
        precision: how the backbone runs: ``"fp32"`` (default, exact),
            ``"bf16"`` (bfloat16 where the CPU or GPU has it natively; an
            error elsewhere) or ``"auto"`` (bf16 where supported and allowed
            by the quality grid, else fp32); see
            :mod:`noise_audit.core.backbones`.
        method: pyDVL influence solver, ``"auto"`` or one of
            :data:`noise_audit.methods.METHODS`.
        regularization: L2 strength of the head (mean-loss scale), or
            ``"auto"`` to pick it by out-of-fold log loss.
        folds: K of the K-fold out-of-sample predictions.
        seed: seed of splits and initialisations.
        batch_size: images per backbone forward pass.
        cache_dir: feature cache root; ``False`` disables caching.
        overwrite: replace an existing audit with the same ``key``.
        progress: show progress bars.
        on_progress: optional ``f(stage, fraction)`` callback.
        train_last_block: also fine-tune the backbone's last block (see
            :mod:`noise_audit.core.finetune`); influence then covers its
            parameters too, with ``method`` in cg, lissa, arnoldi, nystroem
            (``auto`` -> nystroem: cheap self-influence from a low-rank
            sketch; cg is exact but slow for self-influence). Much slower on
            a CPU.
        device: where the backbone, the head and the linear head's
            influence run: ``"auto"`` (a CUDA GPU when present, else the
            CPU), ``"cpu"`` or ``"cuda[:N]"``. pyDVL's solvers run on the CPU.
        client: a ``dask.distributed.Client``: features, head, folds and
            influence are computed on its workers, by row blocks (see
            :mod:`noise_audit.core.distributed`); for the linear head
            (``method`` auto or linear). With ``embeddings_field`` the
            field's vectors are read here and scattered to the workers.
        warm_start: start the linear head from an earlier audit's head (a
            re-audit after a review): its key, ``True`` for the newest audit
            on this dataset with the same backbone and image size, or
            ``None`` (a cold start). Same minimum, fewer steps; see
            :mod:`noise_audit.core.warm_start`.
        embeddings_field: audit on this vector field of the samples instead
            of features computed from the images (see
            :mod:`noise_audit.core.embeddings`): e.g. the field
            ``compute_embeddings`` wrote. No image is read and no backbone
            runs; ``backbone``, ``weights``, ``transform``, ``image_size`` and
            ``train_last_block`` must stay at their defaults. The run's config
            records the field and a fingerprint of its vectors, and
            explanations refuse to run once the vectors change.
        influence_weight: the ranking's share of average influence:
            ``"auto"`` (default) chooses 0, 0.5 or 1 by flips planted into
            this audit's data (:mod:`noise_audit.core.weight_probe`; it refits
            the folds and the head three times on at most 5,000 rows), a
            number in [0, 1] fixes it (0.5 gives the scores of earlier
            versions). The config records the choice and each candidate's
            AP at finding the planted flips.

        min_box_size: for a ``Detections`` field, boxes with a side under
            this many pixels are skipped (counted in one warning, with empty
            ``Detections``, boxes not inside the image and boxes of zero area).

    A ``fo.Detections`` field is audited object by object: the class of
    every box (see :mod:`noise_audit.core.object_audit`): FiftyOne's crops of
    the boxes are the rows, images are kept whole on one side of the split,
    and the signals are attributes of every ``Detection``
    (``{key}_corruption_score``, ...) plus ``{key}_max_score`` and
    ``{key}_num_suspects`` per sample. ``embeddings_field`` then names an
    attribute of the boxes that holds a vector; ``client``,
    ``train_last_block`` and ``warm_start`` are not available.

    Returns:
        an :class:`AuditResults`.
    """
    validation.non_empty(samples)
    check_key(samples._dataset, key, overwrite)
    folds, seed = validation.folds(folds), validation.seed(seed)
    batch_size = validation.integer(batch_size, "batch_size", 1)
    if isinstance(backbone, str):  # a custom module's transform decides its input size
        image_size = validation.image_size(image_size)
    method = validation.influence_method(method, train_last_block, distributed=client is not None)
    regularization = validation.regularization(regularization)
    influence_weight = validation.influence_weight(influence_weight)
    if validation.label_field_kind(samples, label_field) == "detections":
        return _audit_objects(samples, label_field, test=test, key=key, backbone=backbone, weights=weights,
                              transform=transform, image_size=image_size, precision=precision, method=method,
                              regularization=regularization, folds=folds, seed=seed, batch_size=batch_size,
                              overwrite=overwrite, progress=progress, on_progress=on_progress,
                              train_last_block=train_last_block, device=device, client=client,
                              warm_start=warm_start, embeddings_field=embeddings_field, min_box_size=min_box_size,
                              influence_weight=influence_weight)
    if embeddings_field is not None:  # the field's vectors are the features: nothing is computed from pixels
        validation.image_settings_unused(embeddings_field, image_settings_given(
            backbone=backbone, weights=weights, transform=transform, image_size=image_size,
            train_last_block=train_last_block, precision=precision))
        validation.embeddings_field(samples, embeddings_field)
    device = heads.resolve_device(device)
    data = read_labels(samples, label_field, min_per_class=folds)
    is_test, split = _resolve_test(samples, data, test, seed)
    validation.check_split(data.classes, data.labels, is_test)
    clock = _Clock(on_progress)
    t_start = time.perf_counter()

    clock.start("features")
    columns = {"y": data.labels, "train": ~is_test, "fold": pipeline.fold_ids(data.labels, folds, seed)}
    if embeddings_field is None:
        bb, make_head = build_backbone(backbone, weights, transform, image_size, seed, train_last_block,
                                       validation.precision(precision), device)
        if client is None:
            bb.to(device)  # the backbone runs where the head does (extract_features keeps it there)
        source = dict(backbone=bb.name, backbone_id=bb.cache_id, image_size=image_size, precision=bb.precision,
                      weights=weights if isinstance(weights, (str, type(None))) else str(weights))
        features = _features(data.filepaths, bb, columns, make_head is not None, batch_size, cache_dir, progress,
                             on_progress, client)
    else:
        raw = embeddings.read_vectors(samples, embeddings_field, data.ids)
        make_head, source = None, dict(backbone=None, backbone_id=None, image_size=None, weights=None, precision=None,
                                       **embeddings.source_config(embeddings_field, raw))
        features = _standardized(raw, columns, False, 0, client)
        del raw  # only the standardised copy is kept
    start_from = (warm.choose(samples._dataset, warm_start, cast(Optional[str], source["backbone_id"]),
                              cast(Optional[int], source["image_size"]), embeddings_field)
                  if make_head is None else None)
    clock.stop()
    init = (warm.carried_head(samples._dataset, start_from, data.classes, features.mean, features.std)
            if start_from else None)
    out = _head_and_influence(features, columns, len(data.classes), regularization, folds, seed, method, clock,
                              make_head, progress, device, init)
    clock.start("scores")  # the noise model, then the influence weight: its probe refits heads on the features
    noise_parts = noise_model.noise_model_parts(data.labels, out.oos_logits, out.clean_oos_logits, is_test)
    true_class = noise_model.true_class_probs(data.labels, *noise_parts)
    weight = weight_probe.audit_weight(influence_weight, features.x if features.x is not None else features.blocks,
                                       data.labels, is_test, columns["fold"], out, folds, seed, device,
                                       linear_head=make_head is None, noise_parts=noise_parts)
    mean, std, n_computed = features.mean, features.std, features.n_computed
    features = None  # free the features before writing
    signals, n_issues, suspect = scores.audit_signals(data.labels, is_test, out.oos_logits, out.clean_oos_logits,
                                                      out.average_influence, out.self_influence, out.loss,
                                                      true_class=true_class, influence_weight=weight.weight)
    suggested = suggestions.suggested_labels(data.labels, signals["corruption_score"], true_class)
    clock.stop()
    config = dict(
        label_field=label_field, **source, influence_method=out.influence_method, method_requested=method,
        regularization=out.l2, regularization_requested=str(regularization), folds=folds, seed=seed,
        split=split, n_samples=len(data.labels), n_train=int((~is_test).sum()), n_test=int(is_test.sum()),
        n_parameters=infl.n_parameters(out.head), fields=audit_fields(key), version=__version__,
        cache_dir=cache_dir if isinstance(cache_dir, str) else None, train_last_block=bool(train_last_block),
        device=str(device), dask_workers=len(client.scheduler_info()["workers"]) if client is not None else None,
        labels_fingerprint=labels_fingerprint(data.ids, [data.classes[k] for k in data.labels]),  # store/labels.py
        warm_start=start_from if init is not None and method in ("auto", "linear") else None,
        **weight.config(),  # the influence weight, and the probe's APs when it chose it
    )

    clock.start("write")
    results_doc = _results_doc(data, is_test, out, mean, std, n_computed, n_issues, suspect)
    if make_head is None:
        results_doc["head"] = out.head.state()
    else:  # a fine-tuned block is too big for a run document: a file beside the cache
        import torch

        path = head_file(cache_dir, samples._dataset.name, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(out.head.state_dict(), path)
        results_doc["head"] = {"path": path}
    timings = dict(clock.timings)
    config["timings"] = timings

    def finish_timings() -> None:  # called by write_audit once the values are written, before the run is stored
        clock.stop()
        timings["write"] = clock.timings["write"]
        timings["total"] = round(time.perf_counter() - t_start, 4)

    oos_probs = softmax(out.oos_logits, axis=1)
    values = _field_values(data.classes, signals, suspect, out.oos_logits, oos_probs, suggested)
    # an audit replacing one under the same key keeps the decisions still about the same labels
    values["review"] = carried_decisions(samples._dataset, key, data.ids.tolist(),
                                         [data.classes[i] for i in data.labels]) if overwrite else [None] * len(data.ids)
    values["annotation"] = [None] * len(data.ids)  # filled by annotate_suspects
    results = write_audit(samples, key, data.ids.tolist(), values, config, results_doc, signals=signals,
                          predictions=oos_probs, overwrite=overwrite, before_commit=finish_timings)
    warn_if_labels_changed(samples._dataset, key)  # edited by someone else while the audit ran
    if on_progress:
        on_progress("done", 1.0)
    return results


def _audit_objects(samples, label_field, *, backbone, weights, transform, image_size, precision, train_last_block,
                   client, warm_start, embeddings_field, device, seed, **rest):
    """:func:`audit` of a ``Detections`` field (:func:`noise_audit.core.object_audit.audit_objects`)."""
    object_audit.unsupported_settings(client=client, train_last_block=train_last_block, warm_start=warm_start)
    min_box_size = validation.min_box_size(rest.pop("min_box_size"))
    device = heads.resolve_device(device)
    if embeddings_field is not None:
        validation.image_settings_unused(embeddings_field, image_settings_given(
            backbone=backbone, weights=weights, transform=transform, image_size=image_size, precision=precision))
        source = dict(backbone=None, backbone_id=None, image_size=None, weights=None, precision=None)
        make = None
    else:
        bb_precision = validation.precision(precision)

        def make():
            return build_backbone(backbone, weights, transform, image_size, seed, False, bb_precision, device)[0]

        source = dict(backbone=backbone if isinstance(backbone, str) else type(backbone).__name__, backbone_id=None,
                      image_size=image_size, precision=bb_precision,
                      weights=weights if isinstance(weights, (str, type(None))) else str(weights))
    return object_audit.audit_objects(samples, label_field, make_backbone=make, source=source, device=device,
                                      seed=seed, embeddings_attribute=embeddings_field, min_box_size=min_box_size,
                                      **rest)


def image_settings_given(**settings):
    """The settings among ``settings`` that differ from :func:`audit`'s defaults."""
    import inspect

    defaults = inspect.signature(audit).parameters
    return {name: value for name, value in settings.items()
            if not (value is defaults[name].default or value == defaults[name].default)}


def _field_values(classes, signals, suspect, oos_logits, oos_probs, suggested):
    """The values of an audit's fields (see :data:`noise_audit.signals.FIELD_SIGNALS`), the
    review's aside: ``suggested`` is :func:`~noise_audit.core.suggestions.suggested_labels`'s
    triple, stored with the log of its probabilities as logits."""
    predictions = [classification_doc(classes[int(p.argmax())], p.max(), lg) for p, lg in zip(oos_probs, oos_logits)]
    best, confidence, probs = suggested
    log_probs = np.log(np.maximum(probs, 1e-300))
    suggestions_ = [classification_doc(classes[int(c)], conf, lg) for c, conf, lg in zip(best, confidence, log_probs)]
    return {s.field: signals[s.name].tolist() for s in FIELD_SIGNALS} | {
        "suspect": suspect.tolist(), "prediction": predictions, "suggested_label": suggestions_}
