"""Evaluation protocols: which images are queries and which are gallery, per evaluation round.

Two kinds, decided by the manifest:

* **fixed** (MSMT17, Market-1501, VeRi-776): the manifest's ``query`` and ``gallery`` splits, one
  round, gallery entries with the query's pid and camid ignored.
* **gallery draws** (Vehicle-1M, VehicleID; Liu et al., "Deep Relative Distance Learning",
  CVPR 2016, Sec. 5.1): for each test list (``test_1000`` ...) and each of N rounds, one image
  per vehicle is drawn into the gallery and the vehicle's other images are queries. Metrics are
  reported as mean and standard deviation over the N rounds.

``prepare`` writes the draws beside the manifest (``<dataset>.protocol.json``) so that training
(validation) and evaluation score exactly the same splits.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from reid.data.manifest import Manifest, natural_key
from reid.data.row_table import RowTable
from reid.io import atomic_open, atomic_write_text

FORMAT = "reid-protocol"
#: camids given to queries and gallery images of a drawn round: they differ, so the
#: same-pid-same-camera filter never removes a true match.
QUERY_CAMID, GALLERY_CAMID = 0, 1


class ProtocolError(ValueError):
    """A protocol file is missing, malformed or does not match its manifest (names the file)."""


@dataclass(frozen=True)
class Round:
    """One evaluation round: the name of its set, the round number, query and gallery keys."""

    name: str
    index: int
    query: tuple[str, ...]
    gallery: tuple[str, ...]


@dataclass(frozen=True)
class Protocol:
    """The evaluation protocol of one dataset.

    Attributes:
        kind: ``fixed`` or ``gallery_draws``.
        seed: seed of the gallery draws (0 for ``fixed``).
        sets: set name -> tuple of rounds; each round is the tuple of gallery keys (for
            ``gallery_draws``) — for ``fixed`` the single set ``query_gallery`` with an empty round
            (the manifest's splits say it all).
        members: set name -> every key of that set (``gallery_draws`` only), in manifest order.
    """

    kind: str
    seed: int
    sets: dict[str, tuple[tuple[str, ...], ...]]
    members: dict[str, tuple[str, ...]]

    def rounds(self, split_keys: Callable[[str], Sequence[str]]) -> Iterator[Round]:
        """Every round of every set, in set then round order.

        Args:
            split_keys: split name -> its keys in order (e.g. ``ShardsIndex.keys``); a fixed
                protocol takes its query and gallery from it.

        Raises:
            ProtocolError: a drawn gallery key is not a member of its set.
        """
        if self.kind == "fixed":
            yield Round("query_gallery", 0, tuple(split_keys("query")), tuple(split_keys("gallery")))
            return
        for name, draws in self.sets.items():
            members = self.members[name]
            for i, gallery in enumerate(draws):
                chosen = set(gallery)
                if not chosen <= set(members):
                    raise ProtocolError(f"set {name!r} round {i}: gallery keys outside the set")
                yield Round(name, i, tuple(k for k in members if k not in chosen), gallery)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "kind": self.kind, "seed": self.seed,
                           "sets": {k: [list(d) for d in v] for k, v in self.sets.items()},
                           "members": {k: list(v) for k, v in self.members.items()}},
                          sort_keys=True, separators=(",", ":")) + "\n"

    def write(self, path: str | Path) -> None:
        """Write the protocol as compact JSON, atomically."""
        atomic_write_text(path, self.to_json())

    @classmethod
    def read(cls, path: str | Path) -> "Protocol":
        """Read a protocol written by :meth:`write`.

        Raises:
            ProtocolError: missing file, not JSON, or not this format (names the file).
        """
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ProtocolError(f"{path}: no protocol file (run the prepare stage)") from None
        except json.JSONDecodeError as err:
            raise ProtocolError(f"{path}: not valid JSON: {err}") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("kind") not in ("fixed", "gallery_draws"):
            raise ProtocolError(f"{path}: not a {FORMAT} file")
        return cls(raw["kind"], int(raw["seed"]), {k: tuple(tuple(d) for d in v) for k, v in raw["sets"].items()},
                   {k: tuple(v) for k, v in raw["members"].items()})


def _check_args(num_draws: int, seed: int) -> None:
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def _draw_galleries(by_pid: Iterable[tuple[int, Sequence[str]]], num_draws: int, seed: int) -> tuple[tuple[str, ...], ...]:
    """Round ``d``'s gallery of one test list: for each ``(pid, keys sorted)`` in ascending pid
    order, ``keys[default_rng([seed, d, pid]).integers(len(keys))]``. Memory: one key per vehicle
    per round."""
    draws: list[list[str]] = [[] for _ in range(num_draws)]
    for pid, keys in by_pid:
        for d in range(num_draws):
            draws[d].append(keys[int(np.random.default_rng([seed, d, pid]).integers(len(keys)))])
    return tuple(tuple(g) for g in draws)


def build_protocol(manifest: Manifest, num_draws: int, seed: int) -> Protocol:
    """The protocol of ``manifest``: gallery draws when it has test lists, else fixed.

    For each test list and round ``d`` in ``range(num_draws)``, each vehicle's images in that
    list are sorted by key and one index is drawn with ``numpy.random.default_rng([seed, d, pid])``:
    the draw is deterministic, independent of file order, and a vehicle keeps the same gallery
    image in every list of a round (nested lists stay consistent). A vehicle with a single image
    only ever appears in the gallery (a distractor for every query). :func:`write_protocol`
    streams the same protocol from a :class:`~reid.data.row_table.RowTable`.

    Raises:
        ValueError: ``num_draws < 1`` or ``seed < 0``; a manifest with both test lists and a
            fixed query/gallery split.
    """
    _check_args(num_draws, seed)
    test_sets = manifest.test_sets()
    if not test_sets:
        return Protocol("fixed", 0, {"query_gallery": ((),)}, {})
    if manifest.split("query") or manifest.split("gallery"):
        raise ValueError(f"manifest {manifest.dataset!r} has both test lists and a query/gallery split")
    sets, members = {}, {}
    for name, rows in test_sets.items():
        by_pid: dict[int, list[str]] = {}
        for r in rows:
            by_pid.setdefault(r.pid, []).append(r.key)
        sets[name] = _draw_galleries(((pid, sorted(keys)) for pid, keys in sorted(by_pid.items())), num_draws, seed)
        members[name] = tuple(r.key for r in rows)
    return Protocol("gallery_draws", seed, sets, members)


def write_protocol(table: RowTable, path: str | Path, num_draws: int, seed: int) -> tuple[str, tuple[str, ...]]:
    """Stream the protocol of ``table``'s rows to ``path``, atomically: byte-identical to
    ``build_protocol(table.manifest(), num_draws, seed).write(path)``, in flat memory (one test
    list's vehicles at a time; the ``members`` keys stream from the table).

    Returns:
        ``(kind, set names)``.

    Raises:
        ValueError: as :func:`build_protocol`. Nothing is written then.
    """
    _check_args(num_draws, seed)
    names = table.test_sets()
    if not names:
        protocol = Protocol("fixed", 0, {"query_gallery": ((),)}, {})
        protocol.write(path)
        return protocol.kind, tuple(protocol.sets)
    (fixed,) = table.execute("SELECT COUNT(*) FROM rows WHERE split IN ('query', 'gallery')").fetchone()
    if fixed:
        raise ValueError(f"manifest {table.dataset!r} has both test lists and a query/gallery split")
    join = "FROM members m JOIN rows r ON r.relpath = m.relpath WHERE m.test_set = ?"
    with atomic_open(path, "w") as fh:
        fh.write(f'{{"format":{json.dumps(FORMAT)},"kind":"gallery_draws","members":{{')
        for i, name in enumerate(names):  # sorted, as json.dumps(sort_keys=True)
            fh.write(f'{"," if i else ""}{json.dumps(name)}:[')
            keys = table.execute(f"SELECT r.key {join} ORDER BY r.rank, r.relpath", (name,))
            fh.write(",".join(json.dumps(k) for (k,) in keys))
            fh.write("]")
        fh.write(f'}},"seed":{seed},"sets":{{')
        for i, name in enumerate(names):
            groups = itertools.groupby(table.execute(f"SELECT r.pid, r.key {join} ORDER BY r.pid, r.key", (name,)),
                                       key=lambda hit: hit[0])
            draws = _draw_galleries(((pid, [k for _, k in hits]) for pid, hits in groups), num_draws, seed)
            fh.write(f'{"," if i else ""}{json.dumps(name)}:{json.dumps([list(d) for d in draws], separators=(",", ":"))}')
        fh.write("}}\n")
    return "gallery_draws", tuple(sorted(names, key=natural_key))
