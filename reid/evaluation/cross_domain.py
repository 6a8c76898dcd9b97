"""Cross-domain evaluation input: shard only the query/gallery of any dataset root, any layout.

This is the cross-dataset protocol of APNet (Chen et al., Table VII): train on one dataset, test
on another without fine-tuning.
"""

from __future__ import annotations

from pathlib import Path

from reid.data.layouts import parse
from reid.data.manifest import Manifest
from reid.data.shards import ShardsIndex, write_shards


def shard_test_split(layout: str, root: str | Path, out_dir: Path, target_bytes: int = 64 << 20,
                     **layout_options) -> ShardsIndex:
    """Parse ``root`` in ``layout`` and write its query + gallery rows as shards in ``out_dir``.

    Raises:
        LayoutError: the dataset is malformed (names the file and line).
    """
    manifest = parse(layout, root, **layout_options)
    test = Manifest(manifest.dataset, tuple(r for r in manifest.rows if r.split in ("query", "gallery")))
    return write_shards(test, Path(root), Path(out_dir), target_bytes)
