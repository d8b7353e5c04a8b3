"""Stage 2a, FiftyOne models as backbones: any model that computes embeddings.

``backbone=`` also takes a FiftyOne model whose instances compute embeddings
(a ``fiftyone.core.models.Model`` and ``EmbeddingsMixin`` with
``has_embeddings``, for images), e.g. one loaded from the FiftyOne model zoo.
It runs through our own loader, as :func:`~noise_audit.core.features.extract_features`
runs every backbone: worker processes decode the images, the model embeds
each batch with ``embed_all``, the rows are cached.

What the workers hand the model is what FiftyOne's own ``compute_embeddings``
would:

- a Torch model with its own transforms (``TorchModelMixin``, e.g.
  ``fiftyone.utils.torch.TorchImageModel``): the workers apply
  ``model.transforms`` to each RGB PIL image, and ``embed_all`` gets the
  stacked tensor with ``model.preprocess`` off (restored afterwards), so the
  transforms run once, in the workers, in parallel with the network;
- any other model: a list of uint8 RGB ``(h, w, 3)`` arrays, with
  ``model.preprocess`` on.

The model runs where, and at the precision, it was loaded (its config's
``device``, ``use_half_precision``); ``precision="bf16"`` is refused for it.

Its rows are cached under the model's identity (:func:`model_identity`): its
class, its config (callables by qualified name) and a digest of its Torch
weights, so two different models never share rows and the same model loaded
again, in another process, finds them.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from noise_audit.core.backbones import Backbone, cache_key, module_digest
from noise_audit.errors import NoiseAuditError


def is_fiftyone_model(obj: Any) -> bool:
    """Whether ``obj`` is a FiftyOne model (if FiftyOne is not imported, nothing is)."""
    fom = sys.modules.get("fiftyone.core.models")
    return fom is not None and isinstance(obj, fom.Model)


def _takes_torch_transforms(model: Any) -> bool:
    fom = sys.modules["fiftyone.core.models"]
    return isinstance(model, fom.TorchModelMixin) and _property(model, "transforms") is not None


def _property(model: Any, name: str) -> Any:
    """``model.<name>``, or ``None`` where the model does not implement it
    (FiftyOne's base ``Model`` raises ``NotImplementedError``)."""
    try:
        return getattr(model, name)
    except (AttributeError, NotImplementedError):
        return None


def _set_preprocess(model: Any, value: bool) -> Any:
    """Sets ``model.preprocess``; returns the value it had (``None`` where it has none)."""
    previous = _property(model, "preprocess")
    if previous is not None:
        model.preprocess = value
    return previous


def _as_is(image: np.ndarray) -> np.ndarray:
    """The decoded uint8 ``(h, w, 3)`` array, for a model that preprocesses itself."""
    return image


@dataclass
class FiftyOneBackbone(Backbone):
    """A FiftyOne embeddings model as a :class:`~noise_audit.core.backbones.Backbone`."""

    model: Any = field(default=None, repr=False)

    def to(self, device: torch.device) -> None:
        """Nothing: the model runs where it was loaded (its config's ``device``)."""

    def embed(self, batch: torch.Tensor | list, device: torch.device) -> np.ndarray:
        model = self.model
        previous = _set_preprocess(model, self.decode == "numpy")  # off: our workers ran the Torch transforms
        try:
            with model:  # what FiftyOne does around inference (TorchImageModel: no_grad)
                if isinstance(batch, list) and self.decode == "pil":  # ragged: tensors of different sizes
                    out = np.concatenate([_rows(model.embed_all(x[None])) for x in batch])
                else:  # in the usual memory order: the model is not ours to run channels-last
                    out = _rows(model.embed_all(batch.contiguous() if isinstance(batch, torch.Tensor) else batch))
        finally:
            if previous is not None:
                model.preprocess = previous
        return out

    def __call__(self, batch: torch.Tensor | list) -> torch.Tensor:
        return torch.from_numpy(self.embed(batch, torch.device("cpu")))


def _rows(out: Any) -> np.ndarray:
    """``embed_all``'s output as float32 ``(n, d)``: a feature extractor's single
    output taken from its dict, maps mean-pooled."""
    if isinstance(out, dict) and len(out) == 1:
        out = next(iter(out.values()))
    if isinstance(out, torch.Tensor):
        out = out.detach().float().cpu().numpy()
    out = np.asarray(out, dtype=np.float32)
    return out.reshape(out.shape[0], out.shape[1], -1).mean(-1) if out.ndim > 2 else out


def fiftyone_backbone(model: Any, precision: str = "fp32") -> FiftyOneBackbone:
    """A FiftyOne embeddings model as a backbone; raises for one that cannot embed images."""
    fom = sys.modules["fiftyone.core.models"]
    kind = type(model).__name__
    if not (isinstance(model, fom.EmbeddingsMixin) and model.has_embeddings):
        raise NoiseAuditError(
            f"backbone= got a FiftyOne model ({kind}) that does not compute embeddings (has_embeddings is false); "
            "pass one that does, e.g. a zoo model with embeddings (fiftyone.zoo.list_zoo_models(tags='embeddings')), "
            "or a TorchImageModel with as_feature_extractor=True or an embeddings_layer"
        )
    if _property(model, "media_type") not in ("image", None):
        raise NoiseAuditError(f"backbone= got a FiftyOne model for {model.media_type!r} media; noise-audit needs "
                              "one that embeds images")
    if precision == "bf16":
        raise NoiseAuditError("precision='bf16' applies to torch backbones; a FiftyOne model runs at the precision "
                              "it was loaded with (its config's use_half_precision): use precision='fp32' or 'auto'")
    torch_transforms = _takes_torch_transforms(model)
    net = getattr(model, "_model", None)
    return FiftyOneBackbone(
        name=kind, module=net if isinstance(net, torch.nn.Module) else torch.nn.Identity(),
        transform=model.transforms if torch_transforms else _as_is,
        cache_id=cache_key(f"fiftyone-{kind}", model_identity(model), "fp32"), precision="fp32",
        decode="pil" if torch_transforms else "numpy", channels_last=False, model=model,
    )


def model_identity(model: Any) -> str:
    """What a FiftyOne model's embeddings depend on, as text: its class, its
    config, and a digest of its Torch weights where it has them (a
    ``TorchImageModel`` keeps its network as ``_model``).

    The config is ``model.config.serialize()``; what JSON cannot hold is
    described by :func:`_describe` (callables by qualified name, other objects
    by their ``repr`` without memory addresses), so it is the same in every
    process.
    """
    config: Any = getattr(model, "config", None)
    if config is None:
        settings = {}
    else:
        settings = config.serialize() if hasattr(config, "serialize") else vars(config)
    text = json.dumps(settings, sort_keys=True, default=_describe)
    net = getattr(model, "_model", None)
    weights = module_digest(net) if isinstance(net, torch.nn.Module) else "none"
    return f"{_qualname(type(model))}|{text}|weights:{weights}"


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


_ADDRESS = re.compile(r" (object )?at 0x[0-9a-fA-F]+")


def _describe(obj: Any) -> str:
    """A config value JSON cannot hold, as stable text: a module by its class
    (its weights are digested apart), a function or class by its qualified
    name, an object whose ``repr`` is only its class and address by its class
    and attributes, anything else by its ``repr`` (addresses removed)."""
    if isinstance(obj, torch.nn.Module):
        return f"module:{_qualname(type(obj))}"
    if inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj):
        return _qualname(obj)
    text = repr(obj)
    if _ADDRESS.search(text) and hasattr(obj, "__dict__"):
        try:
            return f"{_qualname(type(obj))}({json.dumps(vars(obj), sort_keys=True, default=_describe)})"
        except (TypeError, ValueError, RecursionError):  # cyclic or odd attributes: the class must do
            pass
    return _ADDRESS.sub("", text)
