"""PAN: Part-aware Attention Network.

Xiang, Huang, Hua, Zhang, "Part-aware Attention Network for Person Re-Identification",
ACCV 2020 (``/work/shared/papers/pan-part-aware-attention-network.txt``).

* backbone: ResNet-50 with last stride 1 (Sec. 4.1 "Backbone network");
* PLM, the multi-granularity part feature learning module (Sec. 3.2, Fig. 3, Sec. 4.1
  "Settings of PLM and PAM"): per scale ``i`` in ``{1, 2, 3}``, ``i`` spatial masks ``s^i_j``
  (two stacked Conv-BN-ReLU) and one SE channel vector ``c^i``; part vector
  ``P^i_j = AvgPool((c^i (x) s^i_j) . X^4)``;
* PAM, the part-aware attention module (Sec. 3.1, eqs. 1-3, Fig. 2): for each of the outputs
  ``X^l`` of blocks 1-3, ``Z^l = phi(P) psi(X^l)^T f(X^l) / N_l`` with embedding width ``D``;
* fusion by concatenation (``PAN_c``, Table 2) or addition (``PAN_a``), then one 256-d
  embedding and one classifier per part (Sec. 4.1, 4.2), with BNNeck (Sec. 4.3, ref. [47]);
* losses (Sec. 3.3, eq. 5): per-part CE (``"pan_part_ce"``), batch-hard triplet on the
  concatenated part embeddings (``"triplet"``), orthogonal regularisation of the masks
  (``"pan_orth"``, eq. 4); see :mod:`reid.losses.pan`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from reid.models.backbones import resnet
from reid.models.groups import lr_groups
from reid.models.registry import register

__all__ = ["PAN", "PartAwareAttention", "PartFeatureLearning"]

FUSIONS = ("concat", "add")
NECK_FEATS = ("after", "before")


def _stage_channels(stage: nn.Sequential) -> int:
    """Output channels of a torchvision ResNet stage (``layer1`` .. ``layer4``)."""
    block = stage[-1]
    last = block.conv3 if hasattr(block, "conv3") else block.conv2
    return int(last.out_channels)


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class PartFeatureLearning(nn.Module):
    """PLM at one granularity scale: ``num_parts`` spatial masks + one SE channel vector.

    PAN Sec. 3.2 / Fig. 3 / Sec. 4.1: spatial attention = two stacked Conv2D-BN-ReLU blocks
    (here 1x1 convolutions ``C -> hidden -> num_parts``); channel attention "follows SE-Net"
    (``GAP -> FC(C, C/r) -> ReLU -> FC(C/r, C) -> sigmoid``). The total mask of part ``j`` is
    ``m_j = c (x) s_j`` (``C x h x w``) and the part vector ``P_j = AvgPool(m_j . X)``, i.e.
    ``P_j = c * (1/hw) sum_p s_j[p] X[:, p]``.

    Args:
        in_channels: ``C`` of the backbone output ``X^4``.
        num_parts: parts at this scale (``i`` for scale ``i``).
        hidden: output channels of the first spatial Conv-BN-ReLU.
        se_reduction: SE reduction ratio ``r``.

    Forward:
        ``x``: ``(B, C, h, w)`` float. Returns ``(parts, masks)``: ``parts`` ``(B, num_parts, C)``
        and ``masks`` ``(B, num_parts, h, w)`` (non-negative, the ``s_j`` that eq. 4 regularises).
    """

    def __init__(self, in_channels: int, num_parts: int, hidden: int, se_reduction: int) -> None:
        super().__init__()
        squeezed = max(1, in_channels // se_reduction)
        self.spatial = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_parts, 1, bias=False),
            nn.BatchNorm2d(num_parts),
            nn.ReLU(inplace=True),
        )
        self.channel = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Linear(in_channels, squeezed),
            nn.ReLU(inplace=True),
            nn.Linear(squeezed, in_channels),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        masks = self.spatial(x)  # (B, K, h, w)
        c = self.channel(x)  # (B, C)
        n = x.shape[2] * x.shape[3]
        pooled = torch.einsum("bkn,bcn->bkc", masks.flatten(2), x.flatten(2)) / n  # (B, K, C)
        return pooled * c.unsqueeze(1), masks


class PartAwareAttention(nn.Module):
    """PAM between part vectors and one mid-level feature map (PAN Sec. 3.1, eqs. 1-3, Fig. 2).

        Z = phi(P) psi(X)^T f(X) / N                                          (3)

    with ``theta(P_i, X) = phi(P_i)^T psi(X)`` (eq. 2, dot product in a ``D``-dim space) and
    ``N`` the number of positions of ``X`` (eq. 1). ``phi`` is a 1x1 convolution on the part
    vectors (an ``nn.Linear``), ``psi`` and ``f`` are 1x1 convolutions on ``X``.

    Args:
        part_channels: channels of a part vector ``P_i`` (2048 for ResNet-50).
        in_channels: channels ``C_l`` of ``X``.
        dim: ``D``.
        out_channels: channels of ``f(X)`` (and ``Z``): ``C_l`` for concatenation,
            ``part_channels`` for addition (Sec. 4.1).

    Forward:
        ``parts`` ``(B, P, part_channels)``, ``x`` ``(B, C_l, H, W)`` -> ``Z`` ``(B, P, out_channels)``.
        ``compatibility(parts, x)`` returns ``theta`` ``(B, P, H*W)`` (Fig. 5).
    """

    def __init__(self, part_channels: int, in_channels: int, dim: int, out_channels: int) -> None:
        super().__init__()
        self.phi = nn.Linear(part_channels, dim)
        self.psi = nn.Conv2d(in_channels, dim, 1)
        self.f = nn.Conv2d(in_channels, out_channels, 1)

    def compatibility(self, parts: Tensor, x: Tensor) -> Tensor:
        """``theta(P, X) = phi(P) psi(X)^T``, ``(B, P, H*W)`` (eq. 2)."""
        return self.phi(parts) @ self.psi(x).flatten(2)

    def forward(self, parts: Tensor, x: Tensor) -> Tensor:
        n = x.shape[2] * x.shape[3]
        theta = self.compatibility(parts, x)  # (B, P, N)
        return theta @ self.f(x).flatten(2).transpose(1, 2) / n  # (B, P, out)


@register("pan")
class PAN(nn.Module):
    """Part-aware Attention Network (PAN_c with D = 256 by default).

    Args:
        num_classes: training identities ``N``, >= 1.
        granularities: PLM scales; scale ``i`` learns ``i`` parts (paper: ``(1, 2, 3)``, Table 1).
        pam_dim: PAM inter-channel ``D``: one int for all blocks or one per entry of
            ``pam_blocks`` (paper: 256, Table 2).
        pam_blocks: ResNet blocks whose outputs PAM attends to (paper: ``(1, 2, 3)``);
            ``()`` gives Table 2's *Baseline* (ResNet-50 + PLM, no multi-layer connection).
        fusion: ``"concat"`` (PAN_c, paper default) or ``"add"`` (PAN_a).
        embed_dim: per-part embedding width (paper: 256).
        depth: ResNet depth, 50 (paper) or 18.
        last_stride: stride of layer4 (paper: 1).
        spatial_hidden: width of the first spatial-attention Conv-BN-ReLU (not in the paper).
        se_reduction: SE reduction ratio of the channel attention (SE-Net's 16).
        head_lr_mult: LR multiplier of every non-backbone parameter (paper Sec. 4.1: 0.1 vs 0.01).
        neck_feat: ``embed`` is the BNNeck output (``"after"``, default) or its input (``"before"``).

    Forward:
        ``images`` ``(B, 3, H, W)`` float32. With ``P = sum(granularities)`` parts and
        ``E = embed_dim``, returns a dict with

        * ``"embed"``: ``(B, P*E)``, the concatenated part embeddings after (or before) BNNeck;
        * training mode only:
          ``"feat"`` ``(B, P*E)`` the concatenated pre-BN part embeddings (triplet loss);
          ``"part_logits"`` ``(B, P, N)`` one classifier per part (``"pan_part_ce"``);
          ``"logits"`` ``(B, N)`` the mean of the part logits (for logging/accuracy only);
          ``"part_masks"``: tuple, one ``(B, i, h, w)`` tensor per scale ``i`` with the
          spatial masks ``s^i_j`` on layer4's grid (``"pan_orth"``).

        Parts are ordered by scale, then part index: ``(1,1), (2,1), (2,2), (3,1), ...``.

    Raises:
        ValueError: invalid arguments (constructor) or images not ``(B, 3, H, W)`` (forward).
    """

    losses: tuple[str, ...] = ("pan_part_ce", "triplet", "pan_orth")
    test_input_size = (64, 32)

    def __init__(
        self,
        num_classes: int,
        granularities: Sequence[int] = (1, 2, 3),
        pam_dim: int | Sequence[int] = 256,
        pam_blocks: Sequence[int] = (1, 2, 3),
        fusion: str = "concat",
        embed_dim: int = 256,
        depth: int = 50,
        last_stride: int = 1,
        spatial_hidden: int = 128,
        se_reduction: int = 16,
        head_lr_mult: float = 10.0,
        neck_feat: str = "after",
    ) -> None:
        super().__init__()
        _positive_int("num_classes", num_classes)
        granularities = tuple(granularities)
        if not granularities:
            raise ValueError("granularities must not be empty")
        for g in granularities:
            _positive_int("each granularity", g)
        if len(set(granularities)) != len(granularities):
            raise ValueError(f"granularities must be distinct, got {granularities}")
        pam_blocks = tuple(pam_blocks)
        if any(b not in (1, 2, 3) for b in pam_blocks) or len(set(pam_blocks)) != len(pam_blocks):
            raise ValueError(f"pam_blocks must be distinct entries of (1, 2, 3), got {pam_blocks}")
        dims = (pam_dim,) * len(pam_blocks) if isinstance(pam_dim, int) else tuple(pam_dim)
        if len(dims) != len(pam_blocks):
            raise ValueError(f"pam_dim must be an int or have one entry per pam_block, got {pam_dim!r}")
        for d in dims:
            _positive_int("pam_dim", d)
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        _positive_int("embed_dim", embed_dim)
        _positive_int("spatial_hidden", spatial_hidden)
        _positive_int("se_reduction", se_reduction)
        if not float(head_lr_mult) > 0:
            raise ValueError(f"head_lr_mult must be > 0, got {head_lr_mult!r}")
        if neck_feat not in NECK_FEATS:
            raise ValueError(f"neck_feat must be one of {NECK_FEATS}, got {neck_feat!r}")

        self.num_classes = num_classes
        self.granularities = granularities
        self.num_parts = sum(granularities)
        self.pam_blocks = pam_blocks
        self.pam_dims = dims
        self.fusion = fusion
        self.embed_dim = embed_dim
        self.head_lr_mult = float(head_lr_mult)
        self.neck_feat = neck_feat

        self.backbone, channels = resnet(depth, last_stride)  # raises on bad depth / stride
        block_channels = {i: _stage_channels(getattr(self.backbone, f"layer{i}")) for i in (1, 2, 3)}

        self.plm = nn.ModuleList(
            PartFeatureLearning(channels, g, spatial_hidden, se_reduction) for g in granularities
        )
        self.pam = nn.ModuleList(
            PartAwareAttention(
                channels, block_channels[b], d, block_channels[b] if fusion == "concat" else channels
            )
            for b, d in zip(pam_blocks, dims)
        )
        fused = channels + (sum(block_channels[b] for b in pam_blocks) if fusion == "concat" else 0)
        self.fused_dim = fused
        self.embedding = nn.ModuleList(nn.Linear(fused, embed_dim, bias=False) for _ in range(self.num_parts))
        self.bottleneck = nn.BatchNorm1d(self.num_parts * embed_dim)  # BNNeck on every part at once
        self.classifier = nn.ModuleList(
            nn.Linear(embed_dim, num_classes, bias=False) for _ in range(self.num_parts)
        )
        self._init_head()

    def _init_head(self) -> None:
        for emb in self.embedding:
            nn.init.kaiming_normal_(emb.weight, mode="fan_out")
        nn.init.ones_(self.bottleneck.weight)
        nn.init.zeros_(self.bottleneck.bias)
        self.bottleneck.bias.requires_grad_(False)  # BNNeck: no shift
        for cls in self.classifier:
            nn.init.normal_(cls.weight, mean=0.0, std=0.001)

    @property
    def feat_dim(self) -> int:
        """Dimension of ``embed`` / ``feat``: ``sum(granularities) * embed_dim`` (1536)."""
        return self.num_parts * self.embed_dim

    def _features(self, images: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``(parts, fused, masks)``: ``(B, P, C)``, ``(B, P, fused_dim)``, per-scale masks."""
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(images))))
        mids = {}
        for i in (1, 2, 3):
            x = getattr(b, f"layer{i}")(x)
            mids[i] = x
        x4 = b.layer4(x)
        parts, masks = [], []
        for plm in self.plm:
            p, m = plm(x4)
            parts.append(p)
            masks.append(m)
        part_feats = torch.cat(parts, dim=1)  # (B, P, C)
        zs = [pam(part_feats, mids[blk]) for pam, blk in zip(self.pam, self.pam_blocks)]
        if self.fusion == "concat":
            fused = torch.cat([part_feats, *zs], dim=2)
        else:
            fused = part_feats + sum(zs) if zs else part_feats
        return part_feats, fused, masks

    def forward(self, images: Tensor) -> dict[str, Any]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        _, fused, masks = self._features(images)
        feat = torch.cat([emb(fused[:, i]) for i, emb in enumerate(self.embedding)], dim=1)  # (B, P*E)
        bn_feat = self.bottleneck(feat)
        embed = bn_feat if self.neck_feat == "after" else feat
        if not self.training:
            return {"embed": embed}
        chunks = bn_feat.split(self.embed_dim, dim=1)
        part_logits = torch.stack([cls(c) for cls, c in zip(self.classifier, chunks)], dim=1)  # (B, P, N)
        return {
            "embed": embed,
            "feat": feat,
            "part_logits": part_logits,
            "logits": part_logits.mean(1),
            "part_masks": tuple(masks),
        }

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Groups covering every trainable parameter once.

        ``"backbone"`` at ``base_lr`` (the pre-trained part, paper 0.01); ``"plm"``, ``"pam"``,
        ``"embedding"``, ``"bnneck"`` (BN weight; the frozen bias is excluded) and
        ``"classifier"`` at ``head_lr_mult * base_lr`` (paper 0.1, Sec. 4.1 "Optimization").
        Empty groups (e.g. ``"pam"`` with ``pam_blocks=()``) are omitted.
        """
        head = base_lr * self.head_lr_mult
        return lr_groups([
            ("backbone", self.backbone, base_lr),
            ("plm", self.plm, head),
            ("pam", self.pam, head),
            ("embedding", self.embedding, head),
            ("bnneck", self.bottleneck, head),
            ("classifier", self.classifier, head),
        ])

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, granularities={self.granularities}, "
            f"pam_blocks={self.pam_blocks}, pam_dims={self.pam_dims}, fusion={self.fusion!r}, "
            f"embed_dim={self.embed_dim}, neck_feat={self.neck_feat!r}"
        )
