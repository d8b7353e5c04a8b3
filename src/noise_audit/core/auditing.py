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

import time

import numpy as np
from scipy.special import softmax
from sklearn.metrics import confusion_matrix, f1_score
from sklearn.model_selection import train_test_split

from noise_audit import validation
from noise_audit._version import __version__
from noise_audit.core import distributed, finetune, pipeline, scores
from noise_audit.core import features as feats
from noise_audit.core import head as heads
from noise_audit.core import influence as infl
from noise_audit.core.blocks import Blocks
from noise_audit.core.data import read_labels
from noise_audit.errors import NoiseAuditError
from noise_audit.store.fields import classification_doc
from noise_audit.store.runs import AuditResults, audit_fields, check_key, write_audit  # noqa: F401 (AuditResults re-exported)

DEFAULT_L2 = 3.0
STAGES = ("features", "head", "cross_validation", "influence", "scores", "write")


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


class _Clock:
    def __init__(self, on_progress):
        self.timings, self.on_progress, self._t, self._reported = {}, on_progress, None, -1.0

    def start(self, stage):
        self._stage, self._t = stage, time.perf_counter()
        fraction = STAGES.index(stage) / len(STAGES)
        if self.on_progress and fraction >= self._reported:  # progress only moves forward
            self._reported = fraction
            self.on_progress(stage, fraction)

    def stop(self):
        elapsed = time.perf_counter() - self._t
        self.timings[self._stage] = round(self.timings.get(self._stage, 0.0) + elapsed, 4)


BLOCK_METHODS = ("cg", "lissa", "arnoldi", "nystroem")


def build_backbone(backbone, weights, transform, image_size, seed, train_last_block):
    """``(feature extractor, make_head or None)`` for an audit's settings."""
    bb = feats.get_backbone(backbone, weights, transform, image_size, seed)
    if not train_last_block:
        return bb, None
    trunk, make_head = finetune.trunk_and_block(bb)
    trunk_bb = feats.Backbone(name=bb.name, module=trunk, transform=bb.transform, cache_id=f"{bb.cache_id}-trunk")
    return trunk_bb, make_head


def head_file(cache_dir, dataset_name, key):
    """Where the weights of a fine-tuned last block are kept (too big for a run doc)."""
    import hashlib
    import os

    root = cache_dir if isinstance(cache_dir, str) else feats.default_cache_dir()
    name = hashlib.sha1(f"{dataset_name}/{key}".encode()).hexdigest()[:16]
    return os.path.join(root, "heads", f"{name}.pt")


def audit(
    samples,
    label_field="ground_truth",
    test=None,
    key="noise_audit",
    backbone="efficientnet_lite0",
    weights=None,
    transform=None,
    image_size=224,
    method="auto",
    regularization=DEFAULT_L2,
    folds=5,
    seed=0,
    batch_size=64,
    cache_dir=None,
    overwrite=False,
    progress=True,
    on_progress=None,
    train_last_block=False,
    device="auto",
    client=None,
):
    """Audits a FiftyOne image-classification view for mislabeled samples.

    Fine-tunes a softmax head on frozen backbone features, computes pyDVL
    influence functions and cleanlab's out-of-sample label quality, combines
    them into a corruption score (see :mod:`noise_audit.core.scores`), and writes
    ``{key}_influence``, ``{key}_self_influence``, ``{key}_label_quality``,
    ``{key}_corruption_score``, ``{key}_suspect`` and ``{key}_prediction`` to
    every sample of ``samples``, plus a FiftyOne run ``key``. Nothing is written
    unless the whole audit succeeds.

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
        method: pyDVL influence solver, ``"auto"`` or one of
            :data:`noise_audit.core.influence.METHODS`.
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
            (``method`` auto or linear).

    Returns:
        an :class:`AuditResults`.
    """
    validation.non_empty(samples)
    dataset = samples._dataset
    check_key(dataset, key, overwrite)
    folds, seed = validation.folds(folds), validation.seed(seed)
    batch_size = validation.integer(batch_size, "batch_size", 1)
    if isinstance(backbone, str):  # a custom module's transform decides its input size
        image_size = validation.image_size(image_size)
    if train_last_block:
        method = "nystroem" if method == "auto" else method
        if method not in BLOCK_METHODS:
            raise NoiseAuditError(f"With train_last_block, method must be one of {BLOCK_METHODS}, not {method!r}")
    elif method != "auto" and method not in infl.METHODS:
        raise NoiseAuditError(f"method must be 'auto' or one of {infl.METHODS}, not {method!r}")
    regularization = validation.regularization(regularization)
    if client is not None and (train_last_block or method not in ("auto", "linear")):
        raise NoiseAuditError("client= runs the linear head's closed form on the workers: "
                              "use method 'auto' or 'linear' and no train_last_block")
    device = heads.resolve_device(device)
    data = read_labels(samples, label_field, min_per_class=folds)
    is_test, split = _resolve_test(samples, data, test, seed)
    validation.check_split(data.classes, data.labels, is_test)
    n_classes = len(data.classes)
    clock = _Clock(on_progress)
    t_start = time.perf_counter()

    clock.start("features")
    bb, make_head = build_backbone(backbone, weights, transform, image_size, seed, train_last_block)
    y = data.labels
    folds_of = pipeline.fold_ids(y, folds, seed)
    if client is not None:
        blocks, mean, std, n_computed = distributed.feature_blocks(
            client, data.filepaths, bb, {"y": y, "train": ~is_test, "fold": folds_of}, batch_size, cache_dir)
        n_features = len(mean)
    else:
        raw, n_computed = feats.extract_features(
            data.filepaths, bb, batch_size, cache_dir, progress,
            on_progress=(lambda f: on_progress("features", f / len(STAGES))) if on_progress else None,
        )
        if make_head is None:
            mean, std = feats.standardization(raw, rows=~is_test)
        else:  # the block's own batch norm expects the raw maps
            mean, std = np.zeros(raw.shape[1]), np.ones(raw.shape[1])
        x = np.subtract(raw, mean, dtype=np.float64)  # the one float64 copy of the features
        x /= std
        del raw
        n_features = x.shape[1]
    clock.stop()

    if make_head is None and method in ("auto", "linear"):  # the closed form; else pyDVL
        if client is None:
            blocks = Blocks.from_arrays({"x": x, "y": y, "train": ~is_test, "fold": folds_of}, device=device)
        out = pipeline.linear_signals(blocks, n_features, n_classes, regularization, folds, clock, progress, device)
    else:
        out = pipeline.reference_signals(x, y, is_test, folds_of, n_classes, regularization, folds, seed, method,
                                         clock, make_head, progress, device)
    x = blocks = None  # the features are no longer needed: free them before writing
    l2, head, history, test_pred = out.l2, out.head, out.history, out.test_pred
    avg, self_infl, loss = out.average_influence, out.self_influence, out.loss
    oos_logits = out.oos_logits
    tr, te = ~is_test, is_test

    clock.start("scores")
    oos_probs = softmax(oos_logits, axis=1)
    signals, n_issues, suspect = scores.audit_signals(y, is_test, oos_logits, out.clean_oos_logits, avg, self_infl,
                                                      loss)
    quality, score = signals["label_quality"], signals["corruption_score"]
    clock.stop()
    l2_scores, method_used = out.l2_scores, out.influence_method
    config = dict(
        label_field=label_field, backbone=bb.name, backbone_id=bb.cache_id,
        weights=weights if isinstance(weights, (str, type(None))) else str(weights),
        image_size=image_size, influence_method=method_used, method_requested=method,
        regularization=l2, regularization_requested=str(regularization), folds=folds, seed=seed,
        split=split, n_samples=len(y), n_train=int(tr.sum()), n_test=int(te.sum()),
        n_parameters=infl.n_parameters(head), fields=audit_fields(key), version=__version__,
        cache_dir=cache_dir if isinstance(cache_dir, str) else None, train_last_block=bool(train_last_block),
        device=str(device), dask_workers=len(client.scheduler_info()["workers"]) if client is not None else None,
    )

    clock.start("write")
    preds = [classification_doc(data.classes[int(p.argmax())], p.max(), lg) for p, lg in zip(oos_probs, oos_logits)]
    values = {
        "influence": avg.tolist(), "self_influence": self_infl.tolist(),
        "label_quality": quality.tolist(), "corruption_score": score.tolist(),
        "suspect": suspect.tolist(), "prediction": preds,
    }
    classes_arr = np.array(data.classes)
    per_class = {c: int(((classes_arr[y] == c) & suspect).sum()) for c in data.classes}
    results_doc = dict(
        classes=data.classes, ids=data.ids.tolist(), labels=y.tolist(), is_test=is_test.tolist(),
        head=head.state() if make_head is None else {"path": head_file(cache_dir, dataset.name, key)},
        # None marks a feature dropped as constant on the training set (scale inf)
        feature_mean=mean.tolist(), feature_std=[float(v) if np.isfinite(v) else None for v in std],
        history=history, l2_scores={str(k): v for k, v in (l2_scores or {}).items()},
        num_label_issues=n_issues, label_issues_per_class=per_class,
        test_accuracy=float((test_pred == y[te]).mean()),
        test_f1_macro=float(f1_score(y[te], test_pred, average="macro")),
        test_confusion=confusion_matrix(y[te], test_pred, labels=range(n_classes)).tolist(),
        features_computed=n_computed,
    )
    if make_head is not None:
        import os

        import torch

        os.makedirs(os.path.dirname(results_doc["head"]["path"]), exist_ok=True)
        torch.save(head.state_dict(), results_doc["head"]["path"])
    timings = dict(clock.timings)
    config["timings"] = timings

    def finish_timings():  # called by write_audit once the values are written, before the run is stored
        clock.stop()
        timings["write"] = clock.timings["write"]
        timings["total"] = round(time.perf_counter() - t_start, 4)

    results = write_audit(samples, key, data.ids.tolist(), values, config, results_doc, signals=signals,
                          predictions=oos_probs, overwrite=overwrite, before_commit=finish_timings)
    if on_progress:
        on_progress("done", 1.0)
    return results
