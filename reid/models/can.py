"""CAN: cascade attention network (part-level parsing attention -> pixel-level attention).

"Cascade Attention Network for Person Re-identification"
(``/work/shared/papers/can-cascade-attention-network.txt``), Sec. 3, Fig. 2:

1. appearance stream: a CNN gives the global appearance feature map ``F`` ``(B, D, h, w)``;
2. part-level attention (Sec. 3.2): a human-parsing network (dilated backbone, output stride
   16, global pooling replaced by ASPP + a 1x1 classifier, after Kalayeh et al., SPReID, CVPR
   2018) predicts a softmax over 5 parsing classes (background, head, upper body, legs, feet);
   the 5 part masks are foreground (= 1 - background = sum of the four body parts), head, upper
   body, legs and feet, resized bilinearly to ``h x w`` (Sec. 3.1) and multiplied with ``F``:
   ``S_k = M_k * F``, ``k = 1..5`` (S1 = foreground);
3. pixel-level attention (Sec. 3.3): one HA-CNN spatial-channel attention block per part,
   ``S'_k = A_k(S_k) * S_k``;
4. descriptor (Sec. 3.1): ``[S6 ; GMP(S'_2..S'_5) ; pool(S'_1)]``, 3 x D (3 x 2048 for
   ResNet-50), where ``S6 = GAP(F)`` and GMP is the global max over the four parts and all
   positions;
5. loss (Sec. 3.4, eq. (1)): batch-hard triplet with margin 0.1 on the descriptor
   (``"can_triplet"``, :mod:`reid.losses.can`); the paper has no ID loss.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet18, resnet50
from torchvision.models.segmentation.deeplabv3 import ASPP

from reid.models.attention import SpatialChannelAttention
from reid.models.backbones import resnet, set_last_stride
from reid.models.groups import lr_groups
from reid.models.registry import register

__all__ = ["CAN", "PARSING_CLASSES", "PARTS", "ParsingNet", "load_parsing_weights"]

#: parsing classes of the part-level attention module (softmax over these), in channel order
PARSING_CLASSES = ("background", "head", "upper_body", "legs", "feet")
#: the 5 part masks / part features S1..S5, in order
PARTS = ("foreground", "head", "upper_body", "legs", "feet")
DESCRIPTORS = ("can", "can6")
_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
_CHANNELS = {18: 512, 50: 2048}


class ParsingNet(nn.Module):
    """Human-parsing network of CAN's part-level attention module (CAN Sec. 3.2).

    ResNet trunk with output stride 16: for depth 50 ``layer4``'s stride is replaced by dilation 2
    (torchvision ``replace_stride_with_dilation=[False, False, True]``; "we reduce the stride ...
    from 2 to 1 ... Dilated convolution is adopted"); torchvision's ResNet-18 blocks do not support
    dilation, so depth 18 only sets the last stride to 1. Global pooling is replaced by DeepLab-v3
    ASPP (torchvision's: 1x1 conv, three 3x3 atrous convs at ``aspp_rates``, image pooling, each
    ``aspp_channels`` wide, concatenated and projected by a 1x1 conv) followed by a 1x1 conv
    classifier over :data:`PARSING_CLASSES`.

    Args:
        depth: 50 or 18.
        aspp_rates: atrous rates, (6, 12, 18) (DeepLab v3 at output stride 16).
        aspp_channels: ASPP width, 256.

    Shapes:
        ``(B, 3, H, W)`` -> logits ``(B, 5, ceil(H/16), ceil(W/16))``.
    """

    def __init__(self, depth: int = 50, aspp_rates: Sequence[int] = (6, 12, 18), aspp_channels: int = 256) -> None:
        super().__init__()
        if depth == 50:
            net = resnet50(weights=None, replace_stride_with_dilation=[False, False, True])
        elif depth == 18:
            net = resnet18(weights=None)
            set_last_stride(net, 1)
        else:
            raise ValueError(f"unsupported ResNet depth {depth!r}; expected one of {sorted(_CHANNELS)}")
        self.backbone = nn.Sequential(OrderedDict((n, getattr(net, n)) for n in _TRUNK))
        self.aspp = ASPP(_CHANNELS[depth], list(aspp_rates), aspp_channels)
        self.classifier = nn.Conv2d(aspp_channels, len(PARSING_CLASSES), kernel_size=1)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.aspp(self.backbone(images)))


def load_parsing_weights(module: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a parsing-network state_dict (``torch.save(model.parsing.state_dict(), path)``) into
    ``module`` with ``torch.load(path, weights_only=True)``, strictly.

    Raises:
        FileNotFoundError: ``path`` is not a file (the message names it).
        ValueError: the file cannot be read as a tensor state_dict, or its keys/shapes do not match
            ``module`` (the message names the file and the missing, unexpected and mis-shaped keys).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"CAN parsing_weights: no such file: {str(p)!r}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in several types
        raise ValueError(
            f"CAN parsing_weights: cannot load {str(p)!r} with torch.load(weights_only=True): {exc}"
        ) from exc
    is_state_dict = isinstance(state, Mapping) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items())
    if not is_state_dict:
        raise ValueError(
            f"CAN parsing_weights: {str(p)!r} does not hold a state_dict (a mapping of names to tensors); "
            "save it with torch.save(model.parsing.state_dict(), path)"
        )
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        def show(items: list[str]) -> str:
            return f"{len(items)} {items[:5]}{' ...' if len(items) > 5 else ''}"

        raise ValueError(
            f"CAN parsing_weights: {str(p)!r} does not match the parsing network: missing keys "
            f"{show(missing)}, unexpected keys {show(unexpected)}, shape mismatches {show(shapes)}"
        )
    module.load_state_dict(state, strict=True)


@register("can")
class CAN(nn.Module):
    """Cascade attention network (CAN Sec. 3, Fig. 2) on ResNet streams.

    Args:
        num_classes: number of training identities, >= 1 (only for the ID probe, see below).
        depth: ResNet depth of both streams, 50 (``D`` = 2048, the paper's 3 x 2048 descriptor) or
            18 (``D`` = 512). Appearance stream: ResNet with last stride 1 (output stride 16, as
            the parsing stream; SPReID/CAN halve the output stride of both).
        parsing_weights: path of a state_dict of the parsing network (:class:`ParsingNet`, keys
            ``backbone.*``, ``aspp.*``, ``classifier.*``; e.g. pre-trained on LIP with its labels
            grouped into :data:`PARSING_CLASSES`, as in the paper, Sec. 4.2), loaded with
            ``torch.load(weights_only=True)``; ``None`` (default): the parsing network starts
            from random init and is trained by the re-id loss alone.
        descriptor: ``"can"`` (paper's CAN, 3 x D) or ``"can6"`` (CAN-6 of Sec. 4.3: ``S6``, the
            foreground and the four parts each pooled separately, 6 x D).
        aspp_rates, aspp_channels: the parsing network's ASPP, see :class:`ParsingNet`.
        attention_reduction: channel-stream reduction of the pixel-level attention, 16 (HA-CNN).
        detach_classifier: the ID classifier reads the *detached* descriptor (default ``True``):
            the paper trains with the triplet loss only, so the ``"ce"`` loss on ``logits`` trains
            nothing but this linear probe (it logs ID accuracy and satisfies the model contract).
            ``False`` lets the ID loss reach the network (not in the paper).

    Forward:
        ``images`` ``(B, 3, H, W)`` float32 (the paper uses 748 x 246) -> dict with

        * ``"embed"``: ``(B, E)`` float, the descriptor, ``E = 3 D`` (``"can"``) or ``6 D``;
        * training mode only: ``"feat"`` (the same descriptor, for ``"can_triplet"``),
          ``"logits"`` ``(B, num_classes)`` (ID probe, ``"ce"``) and ``"part_masks"``
          ``(B, 5, h, w)`` in ``[0, 1]`` (:data:`PARTS` order; ``h, w = ceil(H/16), ceil(W/16)``).

    Descriptor ``"can"``: ``[GAP(F) ; max_{k=2..5} GMP(S'_k) ; GAP(S'_1)]`` (the paper does not say
    how S'_1 is "reduced"; average pooling is used). ``"can6"``:
    ``[GAP(F) ; GAP(S'_1) ; GMP(S'_2) ; ... ; GMP(S'_5)]``.

    Raises:
        ValueError: invalid argument, or ``parsing_weights`` not matching (names the file).
        FileNotFoundError: ``parsing_weights`` does not exist (names the file).
    """

    losses: tuple[str, ...] = ("can_triplet", "ce")
    test_input_size = (64, 32)

    def __init__(
        self,
        num_classes: int,
        depth: int = 50,
        parsing_weights: str | os.PathLike[str] | None = None,
        descriptor: str = "can",
        aspp_rates: Sequence[int] = (6, 12, 18),
        aspp_channels: int = 256,
        attention_reduction: int = 16,
        detach_classifier: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if depth not in _CHANNELS:
            raise ValueError(f"unsupported ResNet depth {depth!r}; expected one of {sorted(_CHANNELS)}")
        if descriptor not in DESCRIPTORS:
            raise ValueError(f"descriptor must be one of {DESCRIPTORS}, got {descriptor!r}")
        rates = tuple(aspp_rates) if isinstance(aspp_rates, Sequence) and not isinstance(aspp_rates, str) else None
        if not rates or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rates):
            raise ValueError(f"aspp_rates must be a non-empty sequence of positive ints, got {aspp_rates!r}")
        for name, value in [("aspp_channels", aspp_channels), ("attention_reduction", attention_reduction)]:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(detach_classifier, bool):
            raise ValueError(f"detach_classifier must be a bool, got {detach_classifier!r}")
        if parsing_weights is not None and not isinstance(parsing_weights, (str, os.PathLike)):
            raise ValueError(f"parsing_weights must be a path or None, got {parsing_weights!r}")

        self.num_classes = num_classes
        self.depth = depth
        self.descriptor = descriptor
        self.detach_classifier = detach_classifier
        self.backbone, dim = resnet(depth, last_stride=1)
        self._part_dim = dim
        self.parsing = ParsingNet(depth, rates, aspp_channels)
        self.pixel_attention = nn.ModuleList(SpatialChannelAttention(dim, attention_reduction) for _ in PARTS)
        self.classifier = nn.Linear(self.feat_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, mean=0.0, std=0.001)
        self.parsing_weights = None if parsing_weights is None else str(parsing_weights)
        if parsing_weights is not None:
            load_parsing_weights(self.parsing, parsing_weights)

    @property
    def feat_dim(self) -> int:
        """Descriptor width ``E``: 3 x D (``"can"``) or 6 x D (``"can6"``)."""
        return (3 if self.descriptor == "can" else 6) * self._part_dim

    def parsing_probs(self, images: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Softmax over :data:`PARSING_CLASSES`, ``(B, 5, h, w)``, bilinearly resized to ``size``
        if given (a convex combination, so it stays a distribution at every position)."""
        probs = torch.softmax(self.parsing(images), dim=1)
        if size is not None and tuple(probs.shape[2:]) != tuple(size):
            probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
        return probs

    @staticmethod
    def masks_from_probs(probs: Tensor) -> Tensor:
        """The 5 part-level attention maps (:data:`PARTS`) from parsing probabilities
        ``(B, 5, h, w)``: foreground = sum of the four body-part probabilities (= 1 - background),
        then head, upper body, legs, feet. Returns ``(B, 5, h, w)`` in ``[0, 1]``."""
        return torch.cat((probs[:, 1:].sum(dim=1, keepdim=True), probs[:, 1:]), dim=1)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        fmap = self.backbone(images)  # F, (B, D, h, w)
        masks = self.masks_from_probs(self.parsing_probs(images, fmap.shape[2:]))  # (B, 5, h, w)
        refined = [att(fmap * masks[:, k : k + 1]) for k, att in enumerate(self.pixel_attention)]  # S'_1..S'_5
        s6 = fmap.mean(dim=(2, 3))  # (B, D)
        fg = refined[0].mean(dim=(2, 3))  # (B, D)
        parts = [r.amax(dim=(2, 3)) for r in refined[1:]]  # 4 x (B, D)
        if self.descriptor == "can":
            desc = torch.cat((s6, torch.stack(parts, dim=0).amax(dim=0), fg), dim=1)
        else:
            desc = torch.cat([s6, fg, *parts], dim=1)
        if not self.training:
            return {"embed": desc}
        logits = self.classifier(desc.detach() if self.detach_classifier else desc)
        return {"embed": desc, "feat": desc, "logits": logits, "part_masks": masks}

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Groups ``"backbone"`` (appearance stream), ``"parsing"`` (part-level attention),
        ``"pixel_attention"`` and ``"classifier"``, all at ``base_lr`` (the paper states no
        per-module rates). Every trainable parameter appears exactly once."""
        return lr_groups([("backbone", self.backbone, base_lr), ("parsing", self.parsing, base_lr),
                          ("pixel_attention", self.pixel_attention, base_lr), ("classifier", self.classifier, base_lr)])

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, depth={self.depth}, descriptor={self.descriptor!r}, "
                f"parsing_weights={self.parsing_weights!r}, detach_classifier={self.detach_classifier}")
