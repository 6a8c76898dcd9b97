"""APNet: attention pyramid networks, channel (APNet-C, SE) and spatial (APNet-S, RGA-S).

Chen, Gu, Lu, Bai, Zhou, "Person Re-identification via Attention Pyramid", IEEE TIP 2021
(``/work/shared/papers/apnet-attention-pyramid.txt``).

Registered names:

* ``"apnet_c"`` -- :class:`APNetC`: the pyramid of Squeeze-and-Excitation blocks, the split
  along channels (Sec. III-B "Channel-wise Attention", eq. (5));
* ``"apnet_s"`` -- :class:`APNetS`: the pyramid of RGA-S blocks, the split along the height
  (Sec. III-B "Spatial Attention", eq. (4)).

Both are the Bag-of-Tricks network (ResNet-50, last stride 1, BNNeck; Sec. IV-B, "following the
settings in BOT") with one attention pyramid after each of the four residual stages (Sec. III-A
"Multi-Stage Operation"), trained with label-smoothed cross-entropy + batch-hard triplet
(Sec. III-C, eqs. (6)-(9)): the losses ``"ce"`` and ``"triplet"`` with params' global settings.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from reid.models.attention import RGASpatial, SqueezeExcitation
from reid.models.baseline import ResNetBNNeck
from reid.models.groups import lr_groups
from reid.models.registry import register

__all__ = ["APNetC", "APNetS", "AttentionPyramid", "split_sizes", "stage_channels", "stage_sizes"]

#: ResNet depth -> output channels of layer1..layer4
STAGE_CHANNELS = {18: (64, 128, 256, 512), 50: (256, 512, 1024, 2048)}


def stage_channels(depth: int) -> tuple[int, int, int, int]:
    """Output channels of ``layer1..layer4`` of a torchvision ResNet of ``depth`` (18 or 50).

    Raises:
        ValueError: unsupported depth.
    """
    if depth not in STAGE_CHANNELS:
        raise ValueError(f"unsupported ResNet depth {depth!r}; expected one of {sorted(STAGE_CHANNELS)}")
    return STAGE_CHANNELS[depth]


def stage_sizes(height: int, width: int, last_stride: int = 1) -> list[tuple[int, int]]:
    """Spatial sizes of the outputs of ``layer1..layer4`` of a torchvision ResNet for a
    ``height x width`` input: ``ceil(s / 4)``, ``ceil(s / 8)``, ``ceil(s / 16)``, then
    ``ceil(s / (16 * last_stride))`` (every strided conv/pool there maps ``s`` to ``ceil(s / 2)``)."""

    def down(s: int, f: int) -> int:
        return -(-s // f)

    h, w = down(down(height, 2), 2), down(down(width, 2), 2)  # conv1 + maxpool
    sizes = [(h, w)]
    for stride in (2, 2, last_stride):
        h, w = down(h, stride), down(w, stride)
        sizes.append((h, w))
    return sizes


def split_sizes(total: int, parts: int) -> list[int]:
    """Sizes of ``parts`` contiguous chunks of ``total`` (as ``torch.tensor_split``: the first
    ``total % parts`` chunks are one larger).

    Raises:
        ValueError: ``parts > total`` (a chunk would be empty) or ``parts < 1``.
    """
    if parts < 1 or parts > total:
        raise ValueError(f"cannot split {total} into {parts} non-empty parts")
    q, r = divmod(total, parts)
    return [q + 1 if j < r else q for j in range(parts)]


class AttentionPyramid(nn.Module):
    """The "split-attend-merge-stack" attention pyramid of APNet (Sec. III-A, eqs. (1)-(3), Fig. 2).

    Level ``i = 1..levels`` splits its input ``X_{i-1}`` into ``n_i = radix ** (i - 1)``
    contiguous parts along ``dim`` (1 = channels for APNet-C, 2 = height for APNet-S), computes
    one sub-attention per part (eq. (2), each part has its own block), concatenates them back into
    ``A_i`` (merge), and reweights (stack, eq. (3)): ``X_i = A_i * X_{i-1}``. Level 1 is thus the
    plain global attention and the levels go from coarse to fine, so ``levels = 1`` is exactly the
    underlying block (SE or RGA-S) whatever the radix.

    The blocks' ``attention()`` already ends in the sigmoid, which is the ``sigma`` of eq. (3)
    (applied once, not twice).

    Args:
        blocks: ``blocks[i][j]`` is the sub-attention module of part ``j`` of level ``i + 1``; it
            must have an ``attention(x)`` method returning a tensor broadcastable against ``x``
            whose size along ``dim`` equals the part's.
        sizes: ``sizes[i]``: the part sizes along ``dim`` at level ``i + 1`` (sum = the input's).
        dim: the split dimension of the ``(B, C, H, W)`` input, 1 or 2.

    Shapes:
        ``(B, C, H, W)`` float -> ``(B, C, H, W)``.

    Raises:
        ValueError: inconsistent ``blocks``/``sizes`` or ``dim`` (constructor); the input's size
            along ``dim`` differs from ``sum(sizes[i])`` (call).
    """

    def __init__(self, blocks: list[list[nn.Module]], sizes: list[list[int]], dim: int) -> None:
        super().__init__()
        if dim not in (1, 2):
            raise ValueError(f"dim must be 1 (channels) or 2 (height), got {dim!r}")
        if len(blocks) != len(sizes) or any(len(b) != len(s) for b, s in zip(blocks, sizes)):
            raise ValueError("blocks and sizes must have one entry per level and per part")
        if len({sum(s) for s in sizes}) > 1:
            raise ValueError(f"every level must split the same total, got sizes {sizes}")
        self.dim = dim
        self.sizes = [list(s) for s in sizes]
        self.levels = nn.ModuleList(nn.ModuleList(level) for level in blocks)

    @property
    def num_levels(self) -> int:
        return len(self.levels)

    def forward(self, x: Tensor) -> Tensor:
        for sizes, parts in zip(self.sizes, self.levels):
            if x.shape[self.dim] != sum(sizes):
                raise ValueError(
                    f"attention pyramid built for size {sum(sizes)} along dim {self.dim}, "
                    f"got input of shape {tuple(x.shape)}"
                )
            chunks = torch.split(x, sizes, dim=self.dim)  # split
            att = torch.cat([blk.attention(c) for blk, c in zip(parts, chunks)], dim=self.dim)  # attend + merge
            x = att * x  # stack, eq. (3)
        return x


def _check_level_radix(level: object, radix: object) -> None:
    if not isinstance(level, int) or isinstance(level, bool) or level < 0:
        raise ValueError(f"level must be an int >= 0 (0 = no attention), got {level!r}")
    if not isinstance(radix, int) or isinstance(radix, bool) or radix < 1:
        raise ValueError(f"radix must be a positive int, got {radix!r}")


class _APNetBase(ResNetBNNeck):
    """ResNet + an attention pyramid after each of ``layer1..layer4`` + BNNeck head.

    Subclasses build ``self.pyramids`` (an ``nn.ModuleList`` of 4 :class:`AttentionPyramid`, or
    empty at level 0). The head is :class:`~reid.models.baseline.ResNetBNNeck`'s: GAP ->
    ``feat`` (triplet) -> BatchNorm1d with frozen zero shift -> ``embed`` (the paper's inference
    feature, "the 2048 dimension features after the BN bottleneck", Sec. IV-B) -> bias-free
    classifier -> ``logits`` (CE).
    """

    losses: tuple[str, ...] = ("ce", "triplet")

    def __init__(self, num_classes: int, depth: int, last_stride: int, neck_feat: str,
                 level: int, radix: int) -> None:
        _check_level_radix(level, radix)
        stage_channels(depth)  # validates depth with the model's own message
        super().__init__(num_classes, depth=depth, last_stride=last_stride, neck_feat=neck_feat)
        self.level = level
        self.radix = radix
        self.pyramids = nn.ModuleList()

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        self._check_input(images)
        x = images
        stage = 0
        for name, module in self.backbone.named_children():
            x = module(x)
            if name.startswith("layer") and self.pyramids:
                x = self.pyramids[stage](x)
                stage += 1
        return self._head(x)

    def _check_input(self, images: Tensor) -> None:  # overridden by APNet-S
        pass

    def _head(self, fmap: Tensor) -> dict[str, Tensor]:
        feat = torch.flatten(self.gap(fmap), 1)  # (B, D)
        bn_feat = self.bottleneck(feat)
        embed = bn_feat if self.neck_feat == "after" else feat
        if not self.training:
            return {"embed": embed}
        return {"embed": embed, "feat": feat, "logits": self.classifier(bn_feat)}

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Groups ``"backbone"``, ``"attention"`` (the pyramids; absent at level 0), ``"bnneck"``
        (BN weight; the frozen shift is excluded) and ``"classifier"``, all at ``base_lr`` (the
        paper uses one Adam learning rate, Sec. IV-B). Every trainable parameter appears once."""
        return lr_groups([("backbone", self.backbone, base_lr), ("attention", self.pyramids, base_lr),
                          ("bnneck", self.bottleneck, base_lr), ("classifier", self.classifier, base_lr)])


@register("apnet_c")
class APNetC(_APNetBase):
    """APNet-C: channel-wise attention pyramid of SE blocks (APNet Sec. III-A/B, eqs. (1)-(3), (5)).

    Level ``i`` splits the ``C`` channels into ``radix ** (i - 1)`` groups, each with its own SE
    block (reduction ``se_reduction`` applied to the group's width, at least 1 hidden unit);
    the groups' channel attentions are concatenated and multiplied with the input of the level.

    Args:
        num_classes: number of training identities, >= 1.
        level: pyramid levels, 0..; 2 is the paper's choice (Table IV = APNet-C2 of Table II);
            0 is the plain Bag-of-Tricks network ("APNet0"), 1 is SE-ResNet-style global SE.
        radix: split radix, 2 in the paper (Fig. 5); 1 = no splitting ("stacked attention").
        se_reduction: SE reduction ratio, 16 (SE paper's default; APNet does not state it).
        depth: ResNet depth, 50 (paper) or 18.
        last_stride: 1 (paper, Sec. IV-B) or 2.
        neck_feat: ``"after"`` (paper) or ``"before"`` the BNNeck, as in ``resnet_bnneck``.

    Forward:
        ``images`` ``(B, 3, H, W)`` float32 (any size; the paper trains at 384x192) ->
        ``{"embed": (B, D)}`` and, in training mode, ``"feat"`` ``(B, D)`` (pre-BN, triplet)
        and ``"logits"`` ``(B, num_classes)`` (CE); ``D`` = 2048 (depth 50) or 512 (depth 18).

    Raises:
        ValueError: invalid argument, or ``radix ** (level - 1)`` larger than a stage's channels.
    """

    def __init__(
        self,
        num_classes: int,
        level: int = 2,
        radix: int = 2,
        se_reduction: int = 16,
        depth: int = 50,
        last_stride: int = 1,
        neck_feat: str = "after",
    ) -> None:
        super().__init__(num_classes, depth, last_stride, neck_feat, level, radix)
        if not isinstance(se_reduction, int) or isinstance(se_reduction, bool) or se_reduction < 1:
            raise ValueError(f"se_reduction must be a positive int, got {se_reduction!r}")
        self.se_reduction = se_reduction
        if level > 0:
            for channels in stage_channels(depth):
                sizes = [split_sizes(channels, radix ** i) for i in range(level)]
                blocks = [[SqueezeExcitation(c, se_reduction) for c in s] for s in sizes]
                self.pyramids.append(AttentionPyramid(blocks, sizes, dim=1))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, level={self.level}, radix={self.radix}, se_reduction={self.se_reduction}"


@register("apnet_s")
class APNetS(_APNetBase):
    """APNet-S: spatial attention pyramid of RGA-S blocks (APNet Sec. III-A/B, eqs. (1)-(4)).

    Level ``i`` splits each stage's feature map into ``radix ** (i - 1)`` horizontal stripes
    (along the height), each with its own RGA-S block; the stripes' spatial attention maps are
    concatenated along the height and multiplied with the input of the level.

    RGA-S has one relation channel per spatial position, so the model is built for one input
    size (``input_size``; the paper trains APNet-S at 256x128 following RGA, Sec. IV-B) and only
    accepts images of that size.

    Args:
        num_classes: number of training identities, >= 1.
        input_size: ``(H, W)`` of the input images, (256, 128).
        level: pyramid levels, 0..; 2 is the paper's choice (Table IV = APNet-S2 of Table II).
        radix: split radix, 2 in the paper; 1 = no splitting.
        channel_ratio, spatial_ratio, down_ratio: RGA-S reductions, 8 each (RGA's defaults).
        zero_init_gate: every RGA-S mask starts as the constant 0.5 (its last BN scale at 0; see
            :class:`~reid.models.attention.RGASpatial`). A deviation from RGA's initialisation,
            which starts each mask as noise: four stages multiplied by random masks barely train
            from scratch (``reid/models/README.md``). False restores RGA's initialisation.
        depth, last_stride, neck_feat: as :class:`APNetC`.

    Forward:
        ``images`` ``(B, 3, *input_size)`` float32 -> as :class:`APNetC`.

    Raises:
        ValueError: invalid argument, more stripes than rows in a stage's feature map
            (constructor), or images of another size than ``input_size`` (call).
    """

    test_input_size = (256, 128)  # RGA-S is tied to the input size; the default is the paper's

    def __init__(
        self,
        num_classes: int,
        input_size: tuple[int, int] = (256, 128),
        level: int = 2,
        radix: int = 2,
        channel_ratio: int = 8,
        spatial_ratio: int = 8,
        down_ratio: int = 8,
        zero_init_gate: bool = True,
        depth: int = 50,
        last_stride: int = 1,
        neck_feat: str = "after",
    ) -> None:
        super().__init__(num_classes, depth, last_stride, neck_feat, level, radix)
        try:
            height, width = (int(v) for v in input_size)
        except (TypeError, ValueError):
            raise ValueError(f"input_size must be (H, W), got {input_size!r}") from None
        if height < 1 or width < 1:
            raise ValueError(f"input_size must be positive, got {input_size!r}")
        self.input_size = (height, width)
        if level > 0:
            for channels, (h, w) in zip(stage_channels(depth), stage_sizes(height, width, last_stride)):
                try:
                    sizes = [split_sizes(h, radix ** i) for i in range(level)]
                except ValueError:
                    raise ValueError(
                        f"APNet-S level {level} radix {radix} splits a {h}x{w} feature map into "
                        f"{radix ** (level - 1)} stripes: more than its {h} rows; use a larger input_size"
                    ) from None
                blocks = [[RGASpatial(channels, hj, w, channel_ratio, spatial_ratio, down_ratio,
                                      zero_init_gate) for hj in s]
                          for s in sizes]
                self.pyramids.append(AttentionPyramid(blocks, sizes, dim=2))

    def _check_input(self, images: Tensor) -> None:
        if self.pyramids and tuple(images.shape[2:]) != self.input_size:
            raise ValueError(
                f"APNet-S was built for {self.input_size[0]}x{self.input_size[1]} images (RGA-S "
                f"depends on the number of positions), got {images.shape[2]}x{images.shape[3]}; "
                "build it with input_size=(H, W)"
            )

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, input_size={self.input_size}, level={self.level}, "
                f"radix={self.radix}")
