"""CNN trunks shared by the re-id models.

Weights are never downloaded: every torchvision constructor is called with
``weights=None`` (random init). Pretrained weights, if wanted, must be loaded
explicitly from a local file by the caller.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn
from torchvision.models import resnet18, resnet50
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = ["RESNET_DEPTHS", "resnet", "set_last_stride"]

#: depth -> (torchvision constructor, channels of layer4's output)
RESNET_DEPTHS = {18: (resnet18, 512), 50: (resnet50, 2048)}


def set_last_stride(model: ResNet, stride: int) -> None:
    """Set the stride of the first block of ``model.layer4`` in place.

    The strided conv is ``conv2`` for a :class:`Bottleneck` (torchvision's
    "ResNet v1.5" places the stride on the 3x3 conv) and ``conv1`` for a
    :class:`BasicBlock`; the shortcut's 1x1 ``downsample`` conv is changed too.
    With ``stride=1`` the layer4 feature map keeps the resolution of layer3
    (1/16 of the input instead of 1/32), the "last stride" trick of
    Luo et al., Bag of Tricks, CVPRW 2019, Sec. 4.2.

    Raises:
        ValueError: ``stride`` not in {1, 2}.
        TypeError: unexpected block type.
    """
    if stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {stride!r}")
    block = model.layer4[0]
    if isinstance(block, Bottleneck):
        block.conv2.stride = (stride, stride)
    elif isinstance(block, BasicBlock):
        block.conv1.stride = (stride, stride)
    else:  # pragma: no cover - torchvision only has these two
        raise TypeError(f"unsupported ResNet block {type(block).__name__}")
    if block.downsample is not None:
        block.downsample[0].stride = (stride, stride)


def resnet(depth: int = 50, last_stride: int = 1) -> tuple[nn.Module, int]:
    """Build a randomly initialised torchvision ResNet trunk (no pooling, no fc).

    Args:
        depth: 18 or 50.
        last_stride: stride of layer4 (1 = Bag-of-Tricks setting, 2 = original).

    Returns:
        ``(trunk, out_channels)`` where ``trunk`` is an ``nn.Sequential`` of
        ``conv1, bn1, relu, maxpool, layer1..layer4`` mapping a float32 tensor
        ``(B, 3, H, W)`` to ``(B, C, H/16, W/16)`` (``last_stride=1``) or
        ``(B, C, H/32, W/32)`` (``last_stride=2``), spatial sizes rounded up;
        ``C = out_channels`` = 512 (depth 18) or 2048 (depth 50).

    Raises:
        ValueError: unsupported ``depth`` or ``last_stride``.
    """
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"unsupported ResNet depth {depth!r}; expected one of {sorted(RESNET_DEPTHS)}")
    ctor, out_channels = RESNET_DEPTHS[depth]
    model = ctor(weights=None)
    set_last_stride(model, last_stride)
    # Named children keep torchvision's parameter names ("layer4.0.conv2.weight",
    # ...), so a locally stored torchvision ResNet state_dict (minus ``fc.*``)
    # loads into the trunk directly.
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    trunk = nn.Sequential(OrderedDict((n, getattr(model, n)) for n in names))
    return trunk, out_channels
