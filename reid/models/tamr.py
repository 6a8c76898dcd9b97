"""TAMR: Two-level Attention network with Multi-grain Ranking loss (vehicle re-ID).

Guo, Zhu, Tang, Wang, "Two-Level Attention Network With Multi-Grain Ranking Loss for Vehicle
Re-Identification", IEEE TIP 2019
(``/work/shared/papers/tamr-vehicle-two-level-attention-multi-grain-ranking.txt``):

* hard part-level attention (Sec. III-A): two spatial-transformer (STN) part branches, the
  windscreen and the car head, each with its own small localization network predicting
  ``theta = [sx, tx, sy, ty]`` (eq. (1)), initialised to its prior box and trained with the
  prior-knowledge constraints of eqs. (2)-(7) (:mod:`reid.losses.localization`, loss
  ``"tamr_loc"``); each part is bilinearly resampled to the input size;
* soft pixel-level attention (Sec. III-B): two residual attention modules per branch,
  ``H = (1 + M) * F`` (eq. (8)), ``q = t = n = 1``;
* three ResNet-18 branches (global image, windscreen, car head); the two part feature maps are
  fused by a Network-in-Network block to 512-d and concatenated with the 512-d global feature
  into the 1024-d retrieval feature (Sec. III-D, Fig. 5);
* trained with the multi-grain ranking loss (eqs. (9)-(13), :mod:`reid.losses.mgr`) on each of
  the two 512-d features, plus the localization loss.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from reid.losses.localization import PART_NAMES, PRIOR_AREAS, PRIOR_CENTERS, PRIOR_RATIOS, prior_theta
from reid.models.backbones import resnet
from reid.models.groups import lr_groups
from reid.models.registry import register

__all__ = ["TAMR", "PartLocalizer", "ResidualAttentionModule", "residual_attention", "sample_part", "theta_to_affine"]

_STAGES = ("layer1", "layer2", "layer3", "layer4")


def theta_to_affine(theta: Tensor) -> Tensor:
    """The paper's ``theta = [sx, tx, sy, ty]`` (eq. (1), y up) as ``affine_grid`` matrices.

    ``affine_grid`` uses normalised coordinates with y pointing *down* (``-1`` = top edge),
    the paper y *up* (see :mod:`reid.losses.localization`). With ``y' = -y``, eq. (1)'s
    ``y_in = sy * y_out + ty`` becomes ``y'_in = sy * y'_out - ty``, so

        ``[[sx, 0, tx], [0, sy, -ty]]``.

    Args:
        theta: ``(B, 4)`` float.

    Returns:
        ``(B, 2, 3)`` float, same dtype/device.

    Raises:
        ValueError: ``theta`` not ``(B, 4)``.
    """
    if theta.dim() != 2 or theta.shape[1] != 4:
        raise ValueError(f"expected theta of shape (B, 4) = [sx, tx, sy, ty], got {tuple(theta.shape)}")
    sx, tx, sy, ty = theta.unbind(dim=1)
    zero = torch.zeros_like(sx)
    return torch.stack([torch.stack([sx, zero, tx], dim=1), torch.stack([zero, sy, -ty], dim=1)], dim=1)


def sample_part(images: Tensor, theta: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """Crop the box ``theta`` (paper convention) out of ``images`` and resize it bilinearly.

    The STN grid generator + bilinear sampler (Sec. III-A): output pixel centres are spread
    evenly over the box ``[tx - sx, tx + sx] x [ty - sy, ty + sy]`` (``align_corners=False``:
    ``+-1`` are the outer pixel edges), samples outside the image are 0.

    Args:
        images: ``(B, C, H, W)`` float.
        theta: ``(B, 4)`` float ``[sx, tx, sy, ty]``.
        size: output ``(h, w)``; default the input size ``(H, W)`` (the paper's choice).

    Returns:
        ``(B, C, h, w)``, the dtype of ``images`` (sampled in float32, or float64 for float64
        images, also under autocast).
    """
    b, c, h, w = images.shape
    out_h, out_w = size if size is not None else (h, w)
    # Sampling positions and weights in float32 (or float64) whatever the image dtype / autocast:
    # a bf16 grid would misplace the samples by up to ~1/256 of the image.
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=images.device.type, enabled=False):
        grid = F.affine_grid(theta_to_affine(theta.to(dtype)), [b, c, out_h, out_w], align_corners=False)
        part = F.grid_sample(images.to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return part.to(images.dtype)


def residual_attention(feat: Tensor, mask: Tensor) -> Tensor:
    """Attention residual learning, eq. (8): ``H = (1 + M) * F`` (elementwise)."""
    return (1.0 + mask) * feat


class ResidualAttentionModule(nn.Module):
    """Residual attention module of Sec. III-B (after Wang et al., CVPR 2017), eq. (8).

    ``x -> n pre-processing residual units -> split``: the trunk (main) branch ``F`` is ``t``
    residual units; the soft-mask branch ``M`` is ``q`` residual units, a 1x1 convolution and a
    sigmoid (no bottom-up top-down hourglass, as in the paper); output
    ``H = (1 + M) * F``. With ``M = 0`` the module is exactly its trunk branch (identity
    mapping of the mask unit). Residual units are ResNet-18 basic blocks of ``channels``
    channels (stride 1), so the shape is preserved.

    Args:
        channels: feature channels ``C``.
        n, t, q: numbers of pre-processing, trunk and mask residual units (paper: 1 each).

    Forward: ``(B, C, h, w)`` -> ``(B, C, h, w)``.

    Raises:
        ValueError: non-positive ``channels``, ``t`` or ``q``, or negative ``n``.
    """

    def __init__(self, channels: int, n: int = 1, t: int = 1, q: int = 1) -> None:
        super().__init__()
        for key, value, low in (("channels", channels, 1), ("n", n, 0), ("t", t, 1), ("q", q, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an int >= {low}, got {value!r}")
        self.channels = channels
        self.pre = nn.Sequential(*(BasicBlock(channels, channels) for _ in range(n)))
        self.trunk = nn.Sequential(*(BasicBlock(channels, channels) for _ in range(t)))
        self.mask_units = nn.Sequential(*(BasicBlock(channels, channels) for _ in range(q)))
        # The basic blocks end in a ReLU; the 1x1 conv lets the mask's logits take any sign,
        # so M covers (0, 1) rather than [0.5, 1) (Wang et al. also end the mask with 1x1 convs).
        self.mask_conv = nn.Conv2d(channels, channels, kernel_size=1, bias=True)

    def mask(self, x: Tensor) -> Tensor:
        """The soft mask ``M`` in ``(0, 1)`` of the pre-processed input ``x``."""
        return torch.sigmoid(self.mask_conv(self.mask_units(x)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.pre(x)
        return residual_attention(self.trunk(x), self.mask(x))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, n={len(self.pre)}, t={len(self.trunk)}, q={len(self.mask_units)}"


class PartLocalizer(nn.Module):
    """STN localization network of one part branch (Sec. III-A): predicts ``theta`` (eq. (1)).

    "two convolutional layers followed by pooling and relu layer", then "a 4-dimension FC
    layer": ``conv5x5/2 (3->32) -> maxpool 2 -> ReLU -> conv3x3 (32->64) -> maxpool 2 -> ReLU
    -> adaptive average pool to 7x7 -> FC(64*7*7 -> 4)`` (channel counts, kernels and the
    fixed-size pooling are not given in the paper; at 224x224 the maps are 112 -> 56 -> 56 ->
    28, averaged in 4x4 cells to 7x7; the adaptive pooling keeps the FC's size independent of
    the input size). The FC's weight is zero and its bias the prior ``theta``, so at
    initialisation every image gets exactly the prior box.

    Args:
        prior: ``(sx, tx, sy, ty)`` of the prior box (paper convention, y up).

    Forward: ``(B, 3, H, W)`` float -> ``theta`` ``(B, 4)`` float32 ``[sx, tx, sy, ty]`` (the FC
    runs in float32 even under autocast).
    """

    def __init__(self, prior: Sequence[float]) -> None:
        super().__init__()
        prior = tuple(float(v) for v in prior)
        if len(prior) != 4:
            raise ValueError(f"prior must be (sx, tx, sy, ty), got {prior!r}")
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=5, stride=2, padding=2),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, kernel_size=3, stride=1, padding=1),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(7),
        )
        self.fc = nn.Linear(64 * 7 * 7, 4)
        nn.init.zeros_(self.fc.weight)
        with torch.no_grad():
            self.fc.bias.copy_(torch.tensor(prior))

    def forward(self, images: Tensor) -> Tensor:
        feat = torch.flatten(self.features(images), 1)
        # theta in float32 even under autocast: bf16 would round the prior box (0.3 -> 0.3008)
        # and swallow the small updates of this 0.001x-LR network.
        with torch.autocast(device_type=images.device.type, enabled=False):
            return self.fc(feat.float())


def _branch(depth: int, last_stride: int, attention_after: Sequence[str]) -> tuple[nn.Sequential, int]:
    """A ResNet trunk with one residual attention module inserted after each listed stage
    (in order; a stage may be listed twice for two consecutive modules)."""
    trunk, out_channels = resnet(depth, last_stride)
    children = OrderedDict(trunk.named_children())
    after = {stage: [] for stage in _STAGES}
    for i, stage in enumerate(attention_after):
        after[stage].append(i)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for name, module in children.items():
        layers[name] = module
        if name in after and after[name]:
            last = module[-1]  # BasicBlock (bn2) or Bottleneck (bn3): the stage's output channels
            channels = getattr(last, "bn3", last.bn2).num_features
            for i in after[name]:
                layers[f"attention{i + 1}"] = ResidualAttentionModule(channels)
    return nn.Sequential(layers), out_channels


@register("tamr")
class TAMR(nn.Module):
    """Two-level attention network (Fig. 2): a global branch and two STN part branches.

    Args:
        num_classes: number of training vehicle ids (ID classifiers), >= 1.
        depth: ResNet depth of the three branches, 18 (paper) or 50.
        last_stride: stride of layer4, 2 (paper: plain ResNet-18, 7x7 maps at 224x224) or 1.
        attention_after: the stage after which each residual attention module is inserted,
            one entry per module, in every branch; default ``("layer3", "layer4")`` (two
            modules; see the deviations in ``reid/models/README.md``: the paper's Fig. 2 is not
            in the text). ``("layer4", "layer4")`` stacks both after layer4.
        prior_centers, prior_ratios, prior_areas: the windscreen and car-head priors that
            initialise the localization FCs (:func:`reid.losses.localization.prior_theta`);
            defaults are the paper's and those of loss ``"tamr_loc"`` (keep them equal).
        loc_lr_mult: learning-rate multiplier of the localization networks, 0.001 (Sec. IV-A).
        normalize_embed: L2-normalise the global and the part feature before concatenating
            them into ``embed`` (default True: the MGR distances are on unit features, so the
            squared distance of two embeds is the sum of the two branches' ``D``).

    Forward:
        ``images``: ``(B, 3, H, W)`` float32 (paper: 224x224).

        Returns a dict with

        * ``"embed"``: ``(B, 2 * D)`` float, ``[global, part]`` (``D = 512`` for ResNet-18), the
          retrieval feature (always);
        * training mode only:
            - ``"global_feat"``: ``(B, D)`` pooled global-branch feature (MGR terms),
            - ``"part_feat"``: ``(B, D)`` NIN-fused, pooled part feature (MGR terms),
            - ``"logits"``: ``(B, num_classes)`` ID logits of the global feature,
            - ``"part_logits"``: ``(B, num_classes)`` ID logits of the part feature,
            - ``"theta"``: ``(B, 2, 4)`` float32 ``[sx, tx, sy, ty]`` of the windscreen (``[:, 0]``) and
              car head (``[:, 1]``), paper convention (y up), for loss ``"tamr_loc"``.

    Raises:
        ValueError: invalid arguments; images not ``(B, 3, H, W)``.
    """

    #: eq. (7) localization loss, MGR terms R_c, R_f, P (eqs. (10)-(12)) and C (eq. (13))
    losses: tuple[str, ...] = ("tamr_loc", "mgr_coarse", "mgr_fine", "mgr_pair", "tamr_ce")
    test_input_size = (64, 64)
    part_names = PART_NAMES

    def __init__(
        self,
        num_classes: int,
        depth: int = 18,
        last_stride: int = 2,
        attention_after: Sequence[str] = ("layer3", "layer4"),
        prior_centers: Sequence[Sequence[float]] = PRIOR_CENTERS,
        prior_ratios: Sequence[float] = PRIOR_RATIOS,
        prior_areas: Sequence[float] = PRIOR_AREAS,
        loc_lr_mult: float = 0.001,
        normalize_embed: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if isinstance(attention_after, str):
            attention_after = (attention_after,)
        attention_after = tuple(attention_after)
        if any(stage not in _STAGES for stage in attention_after):
            raise ValueError(f"attention_after entries must be in {_STAGES}, got {attention_after!r}")
        if len(prior_centers) != 2 or len(prior_ratios) != 2 or len(prior_areas) != 2:
            raise ValueError(
                "prior_centers, prior_ratios and prior_areas need one entry per part (windscreen, car head)"
            )
        if isinstance(loc_lr_mult, bool) or not isinstance(loc_lr_mult, (int, float)) or not loc_lr_mult > 0:
            raise ValueError(f"loc_lr_mult must be > 0, got {loc_lr_mult!r}")
        self.num_classes = num_classes
        self.depth = depth
        self.last_stride = last_stride
        self.attention_after = attention_after
        self.loc_lr_mult = float(loc_lr_mult)
        self.normalize_embed = bool(normalize_embed)
        self.priors = tuple(prior_theta(c, r, s) for c, r, s in zip(prior_centers, prior_ratios, prior_areas))

        self.global_branch, dim = _branch(depth, last_stride, attention_after)
        self.localizers = nn.ModuleList(PartLocalizer(p) for p in self.priors)
        self.part_branches = nn.ModuleList(_branch(depth, last_stride, attention_after)[0] for _ in self.priors)
        # NIN (mlpconv) fusion of the concatenated part maps, 2D -> D channels (Sec. III-D)
        self.fusion = nn.Sequential(
            nn.Conv2d(2 * dim, dim, kernel_size=1, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, kernel_size=1, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
        )
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(dim, num_classes)
        self.part_classifier = nn.Linear(dim, num_classes)
        self._feat_dim = dim

    @property
    def feat_dim(self) -> int:
        """Dimension ``D`` of ``global_feat`` / ``part_feat`` (512 for ResNet-18); ``embed`` is ``2 D``."""
        return self._feat_dim

    def localize(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The STN step: ``(theta (B, 2, 4), parts (B, 2, 3, H, W))``, windscreen then car head,
        each part resampled to the input size."""
        thetas = [loc(images) for loc in self.localizers]
        parts = [sample_part(images, theta) for theta in thetas]
        return torch.stack(thetas, dim=1), torch.stack(parts, dim=1)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        global_feat = torch.flatten(self.gap(self.global_branch(images)), 1)  # (B, D)
        thetas = [loc(images) for loc in self.localizers]
        part_maps = [branch(sample_part(images, theta)) for branch, theta in zip(self.part_branches, thetas)]
        part_feat = torch.flatten(self.gap(self.fusion(torch.cat(part_maps, dim=1))), 1)  # (B, D)
        if self.normalize_embed:
            embed = torch.cat([F.normalize(global_feat, dim=1), F.normalize(part_feat, dim=1)], dim=1)
        else:
            embed = torch.cat([global_feat, part_feat], dim=1)
        if not self.training:
            return {"embed": embed}
        return {
            "embed": embed,
            "global_feat": global_feat,
            "part_feat": part_feat,
            "logits": self.classifier(global_feat),
            "part_logits": self.part_classifier(part_feat),
            "theta": torch.stack(thetas, dim=1),
        }

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Optimizer param groups covering every trainable parameter exactly once.

        ``"localization"`` (both STN localization networks) at ``base_lr * loc_lr_mult``
        (paper: 0.001x, "to avoid overfitting", Sec. IV-A); ``"global"`` (global branch),
        ``"parts"`` (the two part branches), ``"fusion"`` (NIN) and ``"classifier"`` (both ID
        classifiers) at ``base_lr``. Empty groups are omitted.
        """
        return lr_groups([
            ("localization", self.localizers, base_lr * self.loc_lr_mult),
            ("global", self.global_branch, base_lr),
            ("parts", self.part_branches, base_lr),
            ("fusion", self.fusion, base_lr),
            ("classifier", nn.ModuleList([self.classifier, self.part_classifier]), base_lr),
        ])

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, depth={self.depth}, last_stride={self.last_stride}, "
            f"attention_after={self.attention_after}, loc_lr_mult={self.loc_lr_mult}, "
            f"normalize_embed={self.normalize_embed}"
        )
