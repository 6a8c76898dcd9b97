"""Re-id models, built by name: ``build("resnet_bnneck", num_classes, depth=50)``.

Importing this package registers the built-in models.
"""

from reid.models.registry import MODELS, Registry, available, build, register
from reid.models.baseline import ResNetBNNeck  # importing registers "resnet_bnneck"
from reid.models import apnet, can, pan, sag, tamr  # noqa: F401,E402  (register apnet_c, apnet_s, can, pan, sag, tamr)

__all__ = ["MODELS", "Registry", "ResNetBNNeck", "available", "build", "register"]
