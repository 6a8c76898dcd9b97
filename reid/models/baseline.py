"""Strong re-id baseline: ResNet + last stride 1 + BNNeck.

Luo, Gu, Liao, Lai, Jiang, "Bag of Tricks and A Strong Baseline for Deep Person
Re-identification", CVPRW 2019 (Sec. 4.2 last stride, Sec. 4.4 / Fig. 5 BNNeck).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from reid.models.backbones import resnet
from reid.models.groups import lr_groups
from reid.models.registry import register

__all__ = ["ResNetBNNeck"]

NECK_FEATS = ("after", "before")


@register("resnet_bnneck")
class ResNetBNNeck(nn.Module):
    """ResNet-18/50 trunk -> GAP -> ``feat`` -> BNNeck -> bias-free classifier.

    Args:
        num_classes: number of training identities (``N`` in the CE loss), >= 1.
        depth: ResNet depth, 18 or 50 (torchvision, ``weights=None``).
        last_stride: stride of layer4, 1 (Bag of Tricks) or 2.
        neck_feat: which feature is returned as ``embed``: ``"after"`` the
            BNNeck (default; the paper's inference feature) or ``"before"`` it.

    Forward:
        ``images``: ``(B, 3, H, W)`` float32, normalised.

        Returns a dict with
          * ``"embed"``: ``(B, D)`` float -- the retrieval feature (always);
          * training mode only: ``"feat"``: ``(B, D)`` pre-BN global feature
            (for the triplet loss) and ``"logits"``: ``(B, num_classes)``
            (for the ID / cross-entropy loss),

        with ``D = feat_dim`` = 512 (depth 18) or 2048 (depth 50).

    BNNeck (Fig. 5): ``BatchNorm1d(D)`` whose bias (shift) is fixed at zero and
    excluded from optimisation, followed by ``Linear(D, num_classes, bias=False)``.
    Init as in the authors' code: BN weight 1, bias 0; classifier weight
    ``N(0, 0.001^2)``. The trunk keeps torchvision's default init.

    Raises:
        ValueError: invalid ``num_classes``, ``depth``, ``last_stride`` or ``neck_feat``.
    """

    #: losses this model's outputs are designed for (weights live in the config).
    losses: tuple[str, ...] = ("ce", "triplet")

    def __init__(
        self,
        num_classes: int,
        depth: int = 50,
        last_stride: int = 1,
        neck_feat: str = "after",
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if neck_feat not in NECK_FEATS:
            raise ValueError(f"neck_feat must be one of {NECK_FEATS}, got {neck_feat!r}")
        self.num_classes = num_classes
        self.depth = depth
        self.last_stride = last_stride
        self.neck_feat = neck_feat

        self.backbone, dim = resnet(depth, last_stride)
        self._feat_dim = dim
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.bottleneck = nn.BatchNorm1d(dim)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        self._init_head()

    def _init_head(self) -> None:
        nn.init.ones_(self.bottleneck.weight)
        nn.init.zeros_(self.bottleneck.bias)
        self.bottleneck.bias.requires_grad_(False)  # BNNeck: no shift
        nn.init.normal_(self.classifier.weight, mean=0.0, std=0.001)

    @property
    def feat_dim(self) -> int:
        """Dimension ``D`` of ``feat`` / ``embed`` (512 or 2048)."""
        return self._feat_dim

    @property
    def in_features(self) -> int:
        """Alias of :attr:`feat_dim` (input width of the classifier)."""
        return self._feat_dim

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        fmap = self.backbone(images)
        feat = torch.flatten(self.gap(fmap), 1)  # (B, D)
        bn_feat = self.bottleneck(feat)  # (B, D)
        embed = bn_feat if self.neck_feat == "after" else feat
        if not self.training:
            return {"embed": embed}
        return {"embed": embed, "feat": feat, "logits": self.classifier(bn_feat)}

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Optimizer param groups covering every trainable parameter exactly once.

        Returns three groups, all at ``lr=base_lr`` (Bag of Tricks uses one LR),
        with distinct ``"name"`` keys so the engine can apply per-group
        multipliers: ``"backbone"`` (trunk), ``"bnneck"`` (BN weight; the frozen
        bias is excluded) and ``"classifier"``. Empty groups are omitted.
        """
        return lr_groups([
            ("backbone", self.backbone, base_lr),
            ("bnneck", self.bottleneck, base_lr),
            ("classifier", self.classifier, base_lr),
        ])

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, depth={self.depth}, "
            f"last_stride={self.last_stride}, neck_feat={self.neck_feat!r}"
        )
