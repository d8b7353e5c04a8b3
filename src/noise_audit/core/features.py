"""Stage 2, features: a frozen pretrained backbone turns images into vectors.

The backbone is frozen, so its features are computed once, in batches with a
progress bar, and cached on disk. This module runs the stage; its parts live
beside it:

- :mod:`noise_audit.core.backbones`: the networks (:func:`get_backbone`);
- :mod:`noise_audit.core.images`: decoding files in worker processes while
  the network runs, and listing every unreadable file in one error;
- :mod:`noise_audit.core.feature_cache`: features on disk, keyed by backbone
  and file, so a second audit of the same images runs no network.

Memory: the features live in one place, the float32 array that
:func:`extract_features` returns, ``n x d x 4`` bytes (1,000,000 images x
1,280 = 4.8 GiB; 60,000 = 293 MiB). Beyond it, extraction holds a bounded
amount: a few batches of images, and a chunk (32 MiB) of cached rows or rows
being written, plus the file keys. The audit then builds one float64
standardized copy (``n x d x 8`` bytes), the one place that needs all
features in memory at once; :func:`standardization` itself works in chunks.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import torch
from tqdm.auto import tqdm

from noise_audit.core import images
from noise_audit.core import backbones
from noise_audit.core.backbones import Backbone  # noqa: F401 (the stage's entry points)
from noise_audit.core.fiftyone_models import fiftyone_backbone, is_fiftyone_model
from noise_audit.core.feature_cache import CHUNK_BYTES, FeatureCache, default_cache_dir, file_keys, row_chunks
from noise_audit.errors import MISSING


def get_backbone(backbone: Any = "efficientnet_lite0", weights: str | os.PathLike[str] | None = None,
                 transform: Callable[[Any], torch.Tensor] | None = None, image_size: int = 224, seed: int = 0, *,
                 precision: str = "fp32", device: torch.device | str | None = None) -> Backbone:
    """The stage's feature extractor: a FiftyOne model that computes embeddings
    (:func:`~noise_audit.core.fiftyone_models.fiftyone_backbone`), else a name
    or a module (:func:`~noise_audit.core.backbones.get_backbone`)."""
    if is_fiftyone_model(backbone):
        from noise_audit import validation

        return fiftyone_backbone(backbone, validation.precision(precision))
    return backbones.get_backbone(backbone, weights, transform, image_size, seed, precision=precision, device=device)

_log = logging.getLogger(__name__)


def _resolve_device(module: torch.nn.Module, device: torch.device | str | None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` means where ``module`` is now (CPU if it has no weights)."""
    if device is not None:
        return torch.device(device)
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def extract_features(
    filepaths: Iterable[str | os.PathLike[str]], backbone: Backbone, batch_size: int = 64,
    cache_dir: str | Literal[False] | None = None, progress: bool = True,
    on_progress: Callable[[float], Any] | None = None, *,
    num_workers: int | None = None, device: torch.device | str | None = None,
) -> tuple[np.ndarray | None, int]:
    """Features of each image, shape ``(n, d)``, from cache where possible.

    Args:
        filepaths: image paths.
        backbone: a :class:`~noise_audit.core.backbones.Backbone` (see :func:`~noise_audit.core.backbones.get_backbone`).
        batch_size: images per forward pass.
        cache_dir: cache root (default :func:`~noise_audit.core.feature_cache.default_cache_dir`); ``False``
            disables the cache.
        progress: show a tqdm bar.
        on_progress: optional callable ``f(done_fraction)``.
        num_workers: processes decoding images while the network runs
            (default :func:`~noise_audit.core.images.default_num_workers`); ``0`` decodes in this
            process.
        device: where the network runs, e.g. ``"cuda"``; the backbone's module
            is moved there. Default: where the module is now.

    Returns:
        ``(features, n_computed)``: a float32 array and how many images were
        run through the network (0 when all came from the cache).

    Raises:
        UnreadableImages: (a :class:`NoiseAuditError`) listing every file that
            is missing, not an image or cannot be decoded in full (e.g. a
            truncated JPEG), all in one message. Files that are missing or not
            images are found before any work: the other images are then only
            decoded, to find every damaged one. Damage past the header shows
            only when decoding, which is done once, while the network runs;
            the good images' features are cached before raising, so the run
            after the fix computes only the fixed files.

    Images whose features are cached are not opened again. That is safe: a
    row is cached only after its image was decoded in full, under a key that
    changes with the file's size or modification time, so a file truncated or
    replaced since is a cache miss and is decoded again.

    A cache directory that cannot be used (a file in its place, no
    permission) does not fail the extraction: it logs one warning and the
    features are computed and returned without it.
    """
    filepaths = [str(p) for p in filepaths]
    stats, missing = images.stat_files(filepaths)
    keys = file_keys(filepaths, stats)
    cache = FeatureCache(cache_dir or default_cache_dir(), backbone.cache_id) if cache_dir is not False else None
    found, feats = np.zeros(len(keys), bool), None
    if cache is not None:
        try:
            found, feats = cache.load(keys)
        except OSError as e:
            cache = _cache_unusable(cache, e)
    bad = dict.fromkeys(missing, MISSING)
    found[missing] = False
    todo = np.flatnonzero(~found)
    todo = todo[~np.isin(todo, missing)] if missing else todo
    bad.update(images.header_problems(filepaths, todo))
    if bad:  # find the damaged files too (decoding only), then list them all
        rest = [int(i) for i in todo if int(i) not in bad]
        bad.update(images.decode_problems(filepaths, rest, batch_size, num_workers, progress))
        raise images.unreadable(filepaths, bad)
    if not len(todo):
        return feats, 0
    device = _resolve_device(backbone.module, device)
    backbone.to(device)
    num_workers = images.default_num_workers(device) if num_workers is None else num_workers
    bar = tqdm(total=len(todo), desc=f"features ({backbone.name})", disable=not progress, unit="img")
    done = 0
    todo_paths = [filepaths[i] for i in todo]
    for batch, count, errors in images.image_batches(todo_paths, backbone.transform, batch_size, num_workers,
                                                     device.type == "cuda", backbone.decode):
        rows = todo[done : done + count]
        ok = np.ones(count, dtype=bool)
        for pos, reason in errors:
            ok[pos] = False
            bad[int(rows[pos])] = reason
        if batch is not None:
            out = backbone.embed(batch, device)
            if feats is None:
                feats = np.zeros((len(keys), out.shape[1]), dtype=np.float32)
            feats[rows[ok]] = out
        done += count
        bar.update(count)
        if on_progress:
            on_progress(done / len(todo))
    bar.close()
    computed = todo[~np.isin(todo, list(bad))] if bad else todo
    if cache is not None and len(computed):
        try:
            cache.save(keys[computed], cast(np.ndarray, feats), rows=computed)
        except OSError as e:
            _cache_unusable(cache, e)
    if bad:
        raise images.unreadable(filepaths, bad)
    return feats, len(todo)


def _cache_unusable(cache, error):
    """Logs, once per extraction, that the cache is skipped; returns ``None`` (no cache)."""
    _log.warning("feature cache %s cannot be used (%s); features are computed without it",
                 cache.dir, images.reason(error))
    return None


def standardization(train_features: npt.ArrayLike, constant_ratio: float = 0.01,
                    rows: npt.ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature ``(mean, scale)`` for standardising features, from the training set.

    The head's L2 penalty treats all standardised features alike, so each is
    divided by its spread on the training samples.

    A feature that is (nearly) constant on the training samples is dropped
    instead (scale ``inf``, so it standardises to 0 everywhere). Such features
    are common for small images, where many channels stay at zero after the
    last activation. Dividing by a spread close to 0 would blow a held-out
    sample where the feature is non-zero up by orders of magnitude (3.7e6 on
    CIFAR-10 at 32 px). That ruins the conditioning of the cross-validation
    heads, which train on held-out samples too, and the influence of held-out
    samples. Dropping them changes nothing for the audit's head: a feature
    that is constant on its training set gets zero gradient, hence a zero
    weight, anyway.

    The sums run in float64 over chunks of rows, so a float32 feature array
    is never copied whole (a float64 copy of a million training rows would
    take 10 GB).

    Args:
        train_features: ``(n, d)`` features of the training samples, or of
            all samples when ``rows`` picks the training ones.
        constant_ratio: a feature whose spread is below this fraction of the
            median spread counts as constant.
        rows: optional boolean mask or indices of the training rows; saves
            the caller a copy of them.

    Returns:
        ``(mean, scale)``, each of shape ``(d,)``, in float64; ``scale`` is
        ``inf`` for dropped features.
    """
    x = np.asarray(train_features)
    rows = np.arange(len(x)) if rows is None else np.asarray(rows)
    rows = np.flatnonzero(rows) if rows.dtype == bool else rows
    chunks = list(row_chunks(rows, CHUNK_BYTES // (8 * max(1, x.shape[1]))))  # in float64
    mean = sum(x[c].sum(0, dtype=np.float64) for c in chunks) / len(rows)
    # Two passes (deviations from the mean), not E[x^2] - E[x]^2, which cancels badly.
    var = sum(np.square(x[c] - mean).sum(0) for c in chunks) / len(rows)
    return mean, scale_from_spread(np.sqrt(var), constant_ratio)


def scale_from_spread(std: np.ndarray, constant_ratio: float = 0.01) -> np.ndarray:
    """The standardisation scale: ``std``, or ``inf`` for (nearly) constant features
    (see :func:`standardization`; Dask workers sum the spreads, this applies the rule)."""
    constant = std <= max(constant_ratio * float(np.median(std)), 1e-12)
    return np.where(constant, np.inf, std)