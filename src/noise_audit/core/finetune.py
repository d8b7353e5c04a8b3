"""Optional stage 3b: fine-tune the backbone's last block with the head.

With ``audit(..., train_last_block=True)`` the frozen part of the backbone
stops one block earlier, its spatial feature maps are cached, and the trained
model is that last block plus the softmax head. Influence is then taken over
all of their parameters (hundreds of thousands), so the solver is pyDVL's
``nystroem`` (default here: a low-rank sketch makes self-influence cheap),
``cg`` (exact, but one block solve per batch of samples: minutes on a CPU),
``arnoldi`` or ``lissa``; ``direct`` would need the full Hessian.

For ``efficientnet_lite0`` the last block is the final 1x1 convolution
(320 -> 1280 channels), written as a per-pixel linear map, followed by its
batch norm (running statistics and affine parameters frozen), ReLU6 and global
average pooling. Its weights start from the pretrained ones and the L2 penalty
pulls them towards those (the head's weights towards zero), so the objective
keeps a unique minimum near the pretrained model and its Hessian is
``H_loss + l2 * I``, what pyDVL inverts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch

from noise_audit.core.head import DTYPE
from noise_audit.errors import NoiseAuditError

if TYPE_CHECKING:
    from noise_audit.core.backbones import Backbone



class TrunkExtractor(torch.nn.Module):
    """EfficientNet-Lite0 up to (not including) its last 1x1 convolution."""

    net: Any  # an efficientnet_lite_pytorch EfficientNet (untyped)

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        for idx, block in enumerate(net._blocks):
            rate = net._global_params.drop_connect_rate
            x = block(x, drop_connect_rate=rate * idx / len(net._blocks) if rate else rate)
        return x.flatten(1)  # (n, 320 * h * w): 2-D like every cached feature


class LastBlockHead(torch.nn.Module):
    """Last block of EfficientNet-Lite0 + softmax layer, on cached trunk maps."""

    in_channels: int
    conv: torch.nn.Linear
    fc: torch.nn.Linear
    conv_reference: torch.Tensor  # buffers
    bn_scale: torch.Tensor
    bn_shift: torch.Tensor

    def __init__(self, conv_weight: torch.Tensor, bn: torch.nn.BatchNorm2d, n_classes: int) -> None:
        super().__init__()
        out_ch, in_ch = conv_weight.shape[:2]
        self.in_channels = in_ch
        self.conv = torch.nn.Linear(in_ch, out_ch, bias=False, dtype=DTYPE)
        with torch.no_grad():
            self.conv.weight.copy_(conv_weight.reshape(out_ch, in_ch))
        self.register_buffer("conv_reference", self.conv.weight.detach().clone())
        scale = bn.weight.detach() / torch.sqrt(cast(torch.Tensor, bn.running_var) + bn.eps)
        self.register_buffer("bn_scale", scale.to(DTYPE))
        self.register_buffer("bn_shift", (bn.bias.detach() - cast(torch.Tensor, bn.running_mean) * scale).to(DTYPE))
        self.fc = torch.nn.Linear(out_ch, n_classes, dtype=DTYPE)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = x.reshape(x.shape[0], self.in_channels, -1).transpose(1, 2)  # (n, pixels, 320)
        h = torch.clamp(self.conv(maps) * self.bn_scale + self.bn_shift, 0.0, 6.0)  # BN, ReLU6
        return self.fc(h.mean(1))

    def penalty(self) -> torch.Tensor:
        """Squared distance to the pretrained block and to a zero head."""
        return ((self.conv.weight - self.conv_reference) ** 2).sum() + sum((p**2).sum() for p in self.fc.parameters())


def trunk_and_block(backbone: Backbone) -> tuple[TrunkExtractor, Callable[[int], LastBlockHead]]:
    """``(trunk module, factory(n_classes) -> LastBlockHead)`` of a backbone."""
    if backbone.name != "efficientnet_lite0":
        raise NoiseAuditError("train_last_block is available for backbone='efficientnet_lite0'")
    net: Any = backbone.module.net  # an EfficientNet (untyped)
    trunk = TrunkExtractor(net).eval()
    conv_w, bn = net._conv_head.weight.detach().to(DTYPE), net._bn1

    def make_head(n_classes: int) -> LastBlockHead:
        return LastBlockHead(conv_w, bn, n_classes)

    return trunk, make_head
