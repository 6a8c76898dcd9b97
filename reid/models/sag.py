"""SAG: Self Attention Grid.

Ainam, Qin, Liu, "Self Attention Grid for Person Re-Identification"
(``/work/shared/papers/sag-self-attention-grid.txt``).

Two weight-sharing ResNet-50 branches (Sec. 3.1, Fig. 2): the upper one sees the image
upsampled x2 (bilinear, eq. 1), the lower one the original image. After residual stage
``D_i`` (the attention depth; ``D_4`` by default, Table 1) the SAG module turns the lower
branch's feature map ``f_2`` into a grid of weights that sum to one over positions
(1x1 conv, BN, ReLU, softmax; eqs. 3-5); the upper branch's feature map is max-filtered over
non-overlapping cells down to that grid and multiplied by it (eq. 6). At ``D_1``-``D_3`` the
product is L2-normalised (eq. 7; Sec. 4.6: only there) and goes through the remaining
stages; the result is pooled and classified with a cross-entropy loss (eq. 2).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reid.models.backbones import resnet
from reid.models.groups import lr_groups
from reid.models.registry import register

__all__ = ["SAG", "SelfAttentionGrid"]

_EPS = 1e-12  # eq. (7)


def _stage_channels(stage: nn.Sequential) -> int:
    block = stage[-1]
    last = block.conv3 if hasattr(block, "conv3") else block.conv2
    return int(last.out_channels)


class SelfAttentionGrid(nn.Module):
    """The SAG module (Sec. 3.2): ``1x1 conv (C -> 1) -> BN -> ReLU -> softmax over positions``.

    ``e = ReLU(BN(w^T x + b))`` (eq. 3), ``G = softmax(e)`` over the ``h*w`` positions of each
    sample (eq. 4), so that ``G`` sums to 1 over the grid (eq. 5).

    Forward:
        ``x`` ``(B, C, h, w)`` float -> ``G`` ``(B, 1, h, w)`` float, non-negative, with
        ``G[b].sum() == 1`` for every ``b`` (softmax computed in float32, cast back to x's dtype).
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 1, 1)
        self.bn = nn.BatchNorm2d(1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        e = self.relu(self.bn(self.conv(x)))  # (B, 1, h, w)
        g = torch.softmax(e.flatten(1).float(), dim=1)
        return g.to(e.dtype).view_as(e)


@register("sag")
class SAG(nn.Module):
    """ResNet baseline with one Self Attention Grid module at attention depth ``D_depth``.

    Args:
        num_classes: training identities ``N``, >= 1.
        depth: attention depth ``i`` of ``D_i``, in 1..4: the SAG module follows ``layer<i>``
            (paper default 4, the best in Table 1; 1-3 reproduce the Table 1 ablation).
        l2_normalize: apply eq. (7) to the attended map; ``None`` (default) follows Sec. 4.6:
            on at depths 1-3, off at depth 4.
        scale_factor: upsampling factor of the upper branch's input (eq. 1: 2).
        backbone_depth: ResNet depth, 50 (paper) or 18.
        last_stride: stride of layer4 (paper: the standard ResNet-50, i.e. 2; Table 1's
            ``D_4`` grid is ``5 x 2`` for ``160 x 64`` inputs).
        head_lr_mult: LR multiplier of the classifier (paper Sec. 4.3: 0.1 vs 0.01 for the rest).

    Forward:
        ``images`` ``(B, 3, H, W)`` float32 (the original, low-resolution image ``I_2``).
        Returns a dict with

        * ``"embed"``: ``(B, C)`` (``C`` = 2048 for ResNet-50), the pooled feature that feeds
          the classifier: at depth 4 the attention-weighted sum over the grid,
          ``sum_p G_p maxfilter(f_1)_p`` (a weighted arithmetic mean, Sec. 3.1), at depths 1-3
          the global average of layer4's output on the attended stream;
        * training mode only: ``"logits"`` ``(B, N)`` and ``"sag_grid"`` ``(B, 1, h, w)`` (the
          grid ``G``; ``h, w`` = size of the lower branch's map after ``layer<depth>``).

    Raises:
        ValueError: invalid arguments (constructor) or images not ``(B, 3, H, W)`` (forward).
    """

    losses: tuple[str, ...] = ("sag_ce",)
    test_input_size = (64, 32)

    def __init__(
        self,
        num_classes: int,
        depth: int = 4,
        l2_normalize: bool | None = None,
        scale_factor: float = 2.0,
        backbone_depth: int = 50,
        last_stride: int = 2,
        head_lr_mult: float = 10.0,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not isinstance(depth, int) or isinstance(depth, bool) or depth not in (1, 2, 3, 4):
            raise ValueError(f"depth (attention depth D_i) must be one of 1, 2, 3, 4, got {depth!r}")
        if l2_normalize is not None and not isinstance(l2_normalize, bool):
            raise ValueError(f"l2_normalize must be a bool or None, got {l2_normalize!r}")
        if not float(scale_factor) > 1.0:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor!r}")
        if not float(head_lr_mult) > 0:
            raise ValueError(f"head_lr_mult must be > 0, got {head_lr_mult!r}")
        self.num_classes = num_classes
        self.depth = depth
        self.l2_normalize = (depth < 4) if l2_normalize is None else l2_normalize
        self.scale_factor = float(scale_factor)
        self.head_lr_mult = float(head_lr_mult)

        self.backbone, channels = resnet(backbone_depth, last_stride)  # raises on bad values
        self._feat_dim = channels
        self.sag = SelfAttentionGrid(_stage_channels(getattr(self.backbone, f"layer{depth}")))
        self.classifier = nn.Linear(channels, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    @property
    def feat_dim(self) -> int:
        """Dimension of ``embed`` (2048 for ResNet-50)."""
        return self._feat_dim

    def _stages(self) -> list[nn.Module]:
        b = self.backbone
        stem = nn.Sequential(b.conv1, b.bn1, b.relu, b.maxpool)
        return [stem, b.layer1, b.layer2, b.layer3, b.layer4]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        stages = self._stages()
        high = F.interpolate(images, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)
        f1, f2 = high, images  # upper (high-resolution) and lower branch, shared weights
        for stage in stages[: self.depth + 1]:
            f1, f2 = stage(f1), stage(f2)
        grid = self.sag(f2)  # (B, 1, h, w), sums to 1 over positions (eq. 5)
        # max filter over non-overlapping cells of f1 down to the grid (Sec. 3.2, "sampled-based
        # discretization"); exactly a 2x2/stride-2 max pool when f1 is twice f2's size
        v = F.adaptive_max_pool2d(f1, grid.shape[2:]) * grid  # eq. (6)
        if self.l2_normalize:  # eq. (7), over the whole attended map of each sample
            v = v / v.flatten(1).norm(dim=1).clamp_min(_EPS).view(-1, 1, 1, 1)
        if self.depth == 4:
            embed = v.sum(dim=(2, 3))  # attention-weighted mean of the grid cells
        else:
            for stage in stages[self.depth + 1 :]:
                v = stage(v)
            embed = v.mean(dim=(2, 3))
        if not self.training:
            return {"embed": embed}
        return {"embed": embed, "logits": self.classifier(embed), "sag_grid": grid}

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """``"backbone"`` and ``"sag"`` at ``base_lr`` (paper: 0.01 for the "upper layers"),
        ``"classifier"`` at ``head_lr_mult * base_lr`` (paper: 0.1 for the fully connected layer)."""
        return lr_groups([
            ("backbone", self.backbone, base_lr),
            ("sag", self.sag, base_lr),
            ("classifier", self.classifier, base_lr * self.head_lr_mult),
        ])

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, depth=D{self.depth}, l2_normalize={self.l2_normalize}, "
            f"scale_factor={self.scale_factor}"
        )
