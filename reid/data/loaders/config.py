"""Settings shared by every loader path (DALI and the PyTorch reference), so both apply the same
image pipeline: decode -> resize -> [pad + random crop] -> [flip] -> [colour jitter] ->
normalise -> [random erasing] -> CHW in the requested dtype."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Output dtypes a loader can produce (``torch.<name>``).
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class AugmentConfig:
    """Image pipeline settings (training augmentations are off for evaluation).

    Attributes:
        image_size: (height, width) of the output in pixels.
        mean, std: per-channel normalisation constants on the 0-255 scale (RGB order).
        flip_prob: probability of a horizontal flip.
        pad: zero-padding border in pixels before the random crop back to ``image_size`` (the crop
            offset is drawn uniformly in ``[-pad, pad]`` px per axis); 0 disables.
        erase_prob: probability of random erasing (Zhong et al., "Random Erasing Data
            Augmentation", AAAI 2020, Alg. 1: p = 0.5 in their re-ID experiments); 0 disables.
        erase_area: range of the erased area as a fraction of the image (paper: s_l = 0.02,
            s_h = 0.4).
        erase_ratio: range of the erased rectangle's aspect ratio h/w (paper: r_1 = 0.3,
            r_2 = 1/0.3). The erased pixels are set to 0 after normalisation, i.e. the mean
            pixel (as torchreid and fast-reid do).
        color_jitter: strength ``s`` of brightness, contrast and saturation jitter: each factor is
            drawn uniformly in ``[1 - s, 1 + s]`` (0 disables).
        dtype: output dtype of the images, one of :data:`DTYPES`.
        num_threads: DALI CPU threads / PyTorch DataLoader workers.
        prefetch: batches prepared ahead of the training step (DALI queue depth, DataLoader
            ``prefetch_factor``).
        hw_decoder_load: share of JPEGs sent to the GPU hardware decoder (DALI mixed device only).
        on_corrupt: what a training loader does with a sample whose JPEG cannot be decoded:
            ``"error"`` raises, naming the shard and key; ``"skip"`` replaces it with another
            image of the same identity and counts it (``loader.skipped``).

    Raises:
        ValueError: a setting out of range (names the field).
    """

    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip_prob: float = 0.5
    pad: int = 0
    erase_prob: float = 0.0
    erase_area: tuple[float, float] = (0.02, 0.4)
    erase_ratio: tuple[float, float] = (0.3, 3.33)
    color_jitter: float = 0.0
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    num_threads: int = 2
    prefetch: int = 2
    hw_decoder_load: float = 0.65
    on_corrupt: Literal["error", "skip"] = "error"

    def __post_init__(self) -> None:
        checks = {
            "image_size": len(self.image_size) == 2 and min(self.image_size) >= 1,
            "flip_prob": 0.0 <= self.flip_prob <= 1.0,
            "pad": self.pad >= 0,
            "erase_prob": 0.0 <= self.erase_prob <= 1.0,
            "erase_area": 0.0 < self.erase_area[0] <= self.erase_area[1] <= 1.0,
            "erase_ratio": 0.0 < self.erase_ratio[0] <= self.erase_ratio[1],
            "color_jitter": 0.0 <= self.color_jitter < 1.0,
            "dtype": self.dtype in DTYPES,
            "num_threads": self.num_threads >= 1,
            "prefetch": self.prefetch >= 1,
            "hw_decoder_load": 0.0 <= self.hw_decoder_load <= 1.0,
            "on_corrupt": self.on_corrupt in ("error", "skip"),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"AugmentConfig: bad {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")

    @property
    def augments(self) -> bool:
        """Whether any random augmentation is on."""
        return bool(self.flip_prob or self.pad or self.erase_prob or self.color_jitter)
