"""Cross-domain evaluation input: shard only the query/gallery of any dataset root, any layout.

This is the cross-dataset protocol of APNet (Chen et al., Table VII): train on one dataset, test
on another without fine-tuning.
"""

from __future__ import annotations

from pathlib import Path

from reid.data.layouts import parse
from reid.data.manifest import Manifest
from reid.data.protocols import Protocol, build_protocol
from reid.data.shards import write_shards

EVAL_SPLITS = ("query", "gallery", "test")


def shard_test_split(layout: str, root: str | Path, out_dir: Path, num_draws: int = 10, gallery_seed: int = 0,
                     target_bytes: int = 64 << 20, **layout_options) -> Protocol:
    """Parse ``root`` in ``layout``, write its evaluation rows (query, gallery, test) as shards in
    ``out_dir`` and return the dataset's protocol (gallery draws for vehicle test lists).

    Raises:
        LayoutError: the dataset is malformed (names the file and line).
    """
    manifest = parse(layout, root, **layout_options)
    protocol = build_protocol(manifest, num_draws, gallery_seed)
    test = Manifest(manifest.dataset, tuple(r for r in manifest.rows if r.split in EVAL_SPLITS))
    write_shards(test, Path(root), Path(out_dir), target_bytes)
    return protocol
