"""Attention blocks shared by the attention-based re-id models.

Every block has ``attention(x) -> a`` (the normalised attention, already passed
through the sigmoid, broadcastable against ``x``) and ``forward(x) = x * a``, so a
caller that merges attentions of several parts (APNet's split-attend-merge) can
ask for ``a`` alone.

* :class:`SqueezeExcitation` -- channel attention: Hu, Shen, Sun,
  "Squeeze-and-Excitation Networks", CVPR 2018, eqs. (2)-(4); APNet eq. (5)
  (``/work/shared/papers/apnet-attention-pyramid.txt``, Sec. III-B).
* :class:`RGASpatial` -- relation-aware global spatial attention (RGA-S):
  Zhang, Lan, Zeng, Jin, Chen, "Relation-Aware Global Attention for Person
  Re-identification", CVPR 2020, Sec. 3.2; APNet eq. (4) (Sec. III-B).
* :class:`SpatialChannelAttention` -- the soft (pixel-level) spatial-channel
  attention of Li, Zhu, Gong, "Harmonious Attention Network for Person
  Re-Identification", CVPR 2018, Sec. 3.1, used per body part by CAN Sec. 3.3
  (``/work/shared/papers/can-cascade-attention-network.txt``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RGASpatial", "SpatialChannelAttention", "SqueezeExcitation", "conv_bn_relu"]


def _check_positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_feature_map(x: Tensor, channels: int, who: str) -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{who} expects a (B, {channels}, H, W) feature map, got {tuple(x.shape)}")


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, padding: int = 0) -> nn.Sequential:
    """``Conv2d(bias=False) -> BatchNorm2d -> ReLU`` (the conv unit of HA-CNN and RGA)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class SqueezeExcitation(nn.Module):
    """Squeeze-and-Excitation channel attention (Hu et al., CVPR 2018; APNet eq. (5)).

        a = sigmoid(W2 ReLU(W1 avgpool(x))),   y = a * x

    with ``W1: C -> max(1, C // reduction)`` and ``W2`` back to ``C``, both
    bias-free fully-connected layers as in the equations (and in the APNet
    authors' ``SELayer``).

    Args:
        channels: ``C``, positive int.
        reduction: ``r``, positive int (16 in the SE paper).

    Shapes:
        ``attention``: ``(B, C, H, W)`` float -> ``(B, C, 1, 1)`` in ``(0, 1)``;
        ``forward``: ``(B, C, H, W)`` -> ``(B, C, H, W)``.

    Raises:
        ValueError: invalid ``channels``/``reduction`` (constructor); input not
            ``(B, C, H, W)`` (call).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.channels = _check_positive_int("channels", channels)
        self.reduction = _check_positive_int("reduction", reduction)
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, channels, bias=False)

    def attention(self, x: Tensor) -> Tensor:
        _check_feature_map(x, self.channels, "SqueezeExcitation")
        z = x.mean(dim=(2, 3))  # squeeze, (B, C)
        a = torch.sigmoid(self.fc2(F.relu(self.fc1(z))))  # excitation, (B, C)
        return a[:, :, None, None]

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}"


class RGASpatial(nn.Module):
    """Relation-aware global spatial attention, RGA-S (Zhang et al., CVPR 2020; APNet eq. (4)).

    For a feature map with ``N = H * W`` nodes ``f_p`` (``C``-d):

    * pairwise relations ``r_pq = theta(f_p)^T phi(f_q)`` (``theta``, ``phi``:
      1x1 conv ``C -> C / channel_ratio`` + BN + ReLU), giving ``R`` ``(N, N)``;
    * relation feature of node ``p``: ``[r_p,: ; r_:,p]`` (``2N`` channels),
      embedded by ``gg``: 1x1 conv ``2N -> N / spatial_ratio`` + BN + ReLU;
    * appearance feature of node ``p``: the channel mean of ``gx(f_p)``
      (1x1 conv ``C -> C / channel_ratio`` + BN + ReLU), 1 channel;
    * ``a = sigmoid(W2 ReLU(W1 [appearance; relation]))`` with ``W1``
      ``1 + N / spatial_ratio -> (1 + N / spatial_ratio) / down_ratio`` (+ BN)
      and ``W2`` ``-> 1`` (+ BN), all 1x1 convs.

    This follows the authors' code (microsoft/Relation-Aware-Global-Attention-Networks,
    ``RGA_Module`` with ``use_channel=False``), the implementation APNet uses
    (footnote 2). Every reduced width is clamped to at least 1 (the authors' formula
    gives 0 channels for small parts, e.g. ``W1`` of a 32-node part).

    Because the relation vector of a node has one entry per node, the block is
    built for one spatial size ``(height, width)`` and only accepts that size.

    Args:
        channels: ``C``.
        height, width: the spatial size of the input feature map.
        channel_ratio, spatial_ratio, down_ratio: the reductions (8, 8, 8 in RGA).
        zero_init_gate: start the last BN's scale at 0, so the mask starts as the constant
            ``sigmoid(0) = 0.5`` (the block starts as a uniform scaling and learns its relations
            from there, like zero-initialised residual gates). False (the RGA code's
            initialisation): the mask starts as random noise around 0.5.

    Shapes:
        ``attention``: ``(B, C, height, width)`` -> ``(B, 1, height, width)`` in ``(0, 1)``;
        ``forward``: ``(B, C, height, width)`` -> same shape.

    Raises:
        ValueError: invalid arguments (constructor); input of another shape (call).
    """

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        channel_ratio: int = 8,
        spatial_ratio: int = 8,
        down_ratio: int = 8,
        zero_init_gate: bool = False,
    ) -> None:
        super().__init__()
        for name, value in [("channels", channels), ("height", height), ("width", width),
                            ("channel_ratio", channel_ratio), ("spatial_ratio", spatial_ratio),
                            ("down_ratio", down_ratio)]:
            _check_positive_int(name, value)
        self.channels, self.height, self.width = channels, height, width
        n = height * width
        inter_c = max(1, channels // channel_ratio)
        inter_s = max(1, n // spatial_ratio)
        self.theta = conv_bn_relu(channels, inter_c)
        self.phi = conv_bn_relu(channels, inter_c)
        self.gx = conv_bn_relu(channels, inter_c)
        self.gg = conv_bn_relu(2 * n, inter_s)
        joint = 1 + inter_s
        hidden = max(1, joint // down_ratio)
        self.W = nn.Sequential(
            nn.Conv2d(joint, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1, bias=False),
            nn.BatchNorm2d(1),
        )
        if zero_init_gate:
            nn.init.zeros_(self.W[-1].weight)

    def attention(self, x: Tensor) -> Tensor:
        _check_feature_map(x, self.channels, "RGASpatial")
        b, _, h, w = x.shape
        if (h, w) != (self.height, self.width):
            raise ValueError(
                f"RGASpatial was built for {self.height}x{self.width} feature maps (its relation "
                f"features have one channel per position), got {h}x{w}"
            )
        n = h * w
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, C')
        phi = self.phi(x).flatten(2)  # (B, C', N)
        rel = torch.bmm(theta, phi)  # (B, N, N), rel[:, p, q] = r_pq
        rel_out = rel.transpose(1, 2).reshape(b, n, h, w)  # at node p: r_p,:  (outgoing)
        rel_in = rel.reshape(b, n, h, w)  # at node q: r_:,q  (incoming)
        relation = self.gg(torch.cat((rel_out, rel_in), dim=1))  # (B, N', H, W)
        appearance = self.gx(x).mean(dim=1, keepdim=True)  # (B, 1, H, W)
        return torch.sigmoid(self.W(torch.cat((appearance, relation), dim=1)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, height={self.height}, width={self.width}"


class SpatialChannelAttention(nn.Module):
    """Soft spatial-channel attention of HA-CNN (Li et al., CVPR 2018, Sec. 3.1, Fig. 3).

    CAN Sec. 3.3: "The spatial stream sequentially links global cross-channel
    average pooling layer, convolutional layers and resize layer. The channel
    stream contains global average pooling layer and two convolutional layers."

    * spatial stream: channel mean ``(B, 1, H, W)`` -> 3x3 conv stride 2 (+BN+ReLU)
      -> bilinear resize back to ``H x W`` -> 1x1 scaling conv (+BN+ReLU);
    * channel stream: global average pool ``(B, C, 1, 1)`` -> 1x1 conv
      ``C -> C / reduction`` (+BN+ReLU) -> 1x1 conv back to ``C`` (+BN+ReLU);
    * fusion (HA-CNN): ``a = sigmoid(BN(Conv1x1_{C->C}(spatial * channel)))``,
      ``y = a * x``.

    Args:
        channels: ``C``.
        reduction: channel-stream reduction (16 in HA-CNN).

    Shapes:
        ``attention``: ``(B, C, H, W)`` -> ``(B, C, H, W)`` in ``(0, 1)``;
        ``forward``: ``(B, C, H, W)`` -> same shape.

    Raises:
        ValueError: invalid arguments (constructor); input not ``(B, C, H, W)`` (call).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.channels = _check_positive_int("channels", channels)
        self.reduction = _check_positive_int("reduction", reduction)
        hidden = max(1, channels // reduction)
        self.spatial_conv = conv_bn_relu(1, 1, kernel=3, stride=2, padding=1)
        self.spatial_scale = conv_bn_relu(1, 1)
        self.channel = nn.Sequential(conv_bn_relu(channels, hidden), conv_bn_relu(hidden, channels))
        self.fuse = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def attention(self, x: Tensor) -> Tensor:
        _check_feature_map(x, self.channels, "SpatialChannelAttention")
        s = self.spatial_conv(x.mean(dim=1, keepdim=True))  # (B, 1, ceil(H/2), ceil(W/2))
        s = F.interpolate(s, size=x.shape[2:], mode="bilinear", align_corners=False)
        s = self.spatial_scale(s)  # (B, 1, H, W)
        c = self.channel(x.mean(dim=(2, 3), keepdim=True))  # (B, C, 1, 1)
        return torch.sigmoid(self.fuse(s * c))  # (B, C, H, W)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.attention(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}"
