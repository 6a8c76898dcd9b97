"""Tests of the manifest/image validation pass (reid.data.validation) on tiny hand-made datasets."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reid.data.manifest import Manifest, Row, key_from_relpath
from reid.data.validation import (
    ERROR_KINDS,
    WARNING_KINDS,
    Issue,
    ValidationConfig,
    ValidationError,
    ValidationReport,
    validate,
    write_report,
)


def _jpeg(seed: int, size: tuple[int, int] = (32, 16)) -> bytes:
    """A small noise JPEG, distinct per seed (w x h = size)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _truncated_jpeg() -> bytes:
    """A JPEG cut in the middle of its entropy-coded data: the header (up to SOS) is intact."""
    data = _jpeg(999, (64, 32))
    sos = data.index(b"\xff\xda")
    return data[: (sos + len(data)) // 2]


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def _build(root: Path, spec: list[tuple[str, int, str, bytes | None]], dataset: str) -> Manifest:
    """Write the files of ``spec`` = [(relpath, pid, split, bytes or None for missing)] under
    ``root`` and return their manifest (in spec order)."""
    rows = []
    for i, (rel, pid, split, data) in enumerate(spec):
        if data is not None:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        rows.append(Row(key_from_relpath(rel), rel, pid, i % 3, -1, split,
                        ("test_a",) if split == "test" else ()))
    return Manifest(dataset, tuple(rows))


def _clean_spec() -> list[tuple[str, int, str, bytes | None]]:
    return [
        ("train/0001_a.jpg", 1, "train", _jpeg(1)),
        ("train/0001_b.jpg", 1, "train", _jpeg(2)),
        ("train/0002_a.jpg", 2, "train", _jpeg(3)),
        ("train/0002_b.jpg", 2, "train", _jpeg(4)),
        ("val/0002_c.jpg", 2, "val", _jpeg(5)),
        ("query/0003_a.jpg", 3, "query", _jpeg(6)),
        ("gallery/0003_b.jpg", 3, "gallery", _jpeg(7)),
        ("gallery/junk.jpg", -1, "gallery", _jpeg(8)),
        ("gallery/distractor.jpg", 0, "gallery", _jpeg(9)),
        ("test/0004_a.jpg", 4, "test", _jpeg(10)),
    ]


# The problem dataset: every check trips at least once; comments say which.
A, M = _jpeg(101), _jpeg(113)
PROBLEM_SPEC: list[tuple[str, int, str, bytes | None]] = [
    ("train/0000_a.jpg", 0, "train", _jpeg(100)),         # pid 0 in train and gallery: exempt
    ("train/0000_b.jpg", 0, "train", _jpeg(99)),
    ("train/0001_a.jpg", 1, "train", A),
    ("train/0001_b.jpg", 1, "train", _jpeg(102)),
    ("train/0002_a.jpg", 2, "train", _jpeg(103)),
    ("train/0002_dup.jpg", 2, "train", _jpeg(103)),         # same bytes, same pid: warning
    ("train/0003_a.jpg", 3, "train", _jpeg(104)),
    ("train/0003_trunc.jpg", 3, "train", _truncated_jpeg()),  # corrupt_jpeg (decode only)
    ("train/0004_garbage.jpg", 4, "train", b"this is not an image at all" * 4),  # not_jpeg
    ("train/0004_png.jpg", 4, "train", _png()),             # not_jpeg (PIL would read it)
    ("train/0005_a.jpg", 5, "train", _jpeg(105)),           # only image of pid 5: small id
    ("train/0006_a.jpg", 6, "train", _jpeg(106)),           # pid 6 also in gallery: pid_train_test
    ("train/0006_b.jpg", 6, "train", _jpeg(107)),
    ("train/0007_a.jpg", 7, "train", M),
    ("train/0007_b.jpg", 7, "train", _jpeg(108)),
    ("train/0008_dup.jpg", 8, "train", M),                  # same bytes as pid 7: duplicate_across_pids
    ("train/0008_b.jpg", 8, "train", _jpeg(109)),
    ("query/0009_a.jpg", 9, "query", _jpeg(110)),
    ("query/0009_missing.jpg", 9, "query", None),          # unreadable_file
    ("gallery/0006_c.jpg", 6, "gallery", _jpeg(111)),
    ("gallery/0009_b.jpg", 9, "gallery", _jpeg(112)),
    ("gallery/0009_leak.jpg", 9, "gallery", A),             # same bytes as train pid 1: duplicate_train_test
    ("gallery/junk.jpg", -1, "gallery", _jpeg(114)),
    ("gallery/0000_c.jpg", 0, "gallery", _jpeg(115)),
]

# (kind, files, pids) expected for PROBLEM_SPEC, in report order.
EXPECTED_ERRORS = [
    ("unreadable_file", ("query/0009_missing.jpg",), ()),
    ("not_jpeg", ("train/0004_garbage.jpg",), ()),
    ("not_jpeg", ("train/0004_png.jpg",), ()),
    ("corrupt_jpeg", ("train/0003_trunc.jpg",), ()),
    ("duplicate_train_test", ("train/0001_a.jpg", "gallery/0009_leak.jpg"), (1, 9)),
    ("duplicate_across_pids", ("train/0007_a.jpg", "train/0008_dup.jpg"), (7, 8)),
    ("pid_train_test", ("train/0006_a.jpg", "train/0006_b.jpg", "gallery/0006_c.jpg"), (6,)),
]
EXPECTED_WARNINGS = [
    ("duplicate_same_pid", ("train/0002_a.jpg", "train/0002_dup.jpg"), (2,)),
    ("small_train_id", ("train/0005_a.jpg",), (5,)),
]


def _summary(issues: tuple[Issue, ...]) -> list[tuple[str, tuple[str, ...], tuple[int, ...]]]:
    return [(i.kind, i.files, i.pids) for i in issues]


def _cfg(**kw) -> ValidationConfig:
    base = dict(min_images=2, drop_small_ids=False, fatal=False, workers=1, decode=True)
    base.update(kw)
    return ValidationConfig(**base)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Path]:
    root = tmp_path_factory.mktemp("clean")
    return _build(root, _clean_spec(), "clean"), root


@pytest.fixture(scope="module")
def problem(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Path]:
    """The problem dataset under ``<a folder of its own>/data``: the folder above the root holds
    nothing else, so a test can check that nothing is written next to the root."""
    root = tmp_path_factory.mktemp("problem") / "data"
    root.mkdir()
    return _build(root, PROBLEM_SPEC, "problem"), root


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


@pytest.mark.parametrize("decode", [True, False])
def test_clean_dataset_has_no_issues(clean, decode):
    manifest, root = clean
    out, report = validate(manifest, root, _cfg(decode=decode, drop_small_ids=True, fatal=True))
    assert out is manifest
    assert report.errors == () and report.warnings == () and report.dropped_ids == ()
    assert report.ok
    assert report.images == report.files == 10
    assert report.splits == {"train": {"images": 4, "pids": 2}, "val": {"images": 1, "pids": 1},
                             "query": {"images": 1, "pids": 1}, "gallery": {"images": 3, "pids": 3},
                             "test": {"images": 1, "pids": 1}}
    assert set(report.counts().values()) == {0}
    assert "OK: 0 error(s), 0 warning(s)" in report.to_text()


def test_problem_report_exact(problem):
    manifest, root = problem
    out, report = validate(manifest, root, _cfg())
    assert _summary(report.errors) == EXPECTED_ERRORS
    assert _summary(report.warnings) == EXPECTED_WARNINGS
    assert not report.ok
    assert out is manifest and report.dropped_ids == ()  # kept: drop_small_ids=False
    assert report.images == len(PROBLEM_SPEC) and report.files == len(PROBLEM_SPEC)
    msg = {i.files[0]: i.message for i in report.errors + report.warnings}
    assert "89 50 4e 47" in msg["train/0004_png.jpg"] and "PNG" in msg["train/0004_png.jpg"]
    assert "not an image PIL can identify" in msg["train/0004_garbage.jpg"]
    assert "truncated" in msg["train/0003_trunc.jpg"]
    assert "No such file" in msg["query/0009_missing.jpg"]
    assert "train pid 5 has 1 image(s) < min_images 2; kept" in msg["train/0005_a.jpg"]
    assert "pid 6 is in train (2 images) and gallery (1 images)" in msg["train/0006_a.jpg"]
    assert "leakage" in msg["train/0001_a.jpg"] and "gallery pid 9" in msg["train/0001_a.jpg"]
    assert report.counts() == {"unreadable_file": 1, "not_jpeg": 2, "corrupt_jpeg": 1, "duplicate_train_test": 1,
                               "duplicate_across_pids": 1, "pid_train_test": 1, "duplicate_same_pid": 1,
                               "small_train_id": 1}


def test_header_only_check_misses_truncation_but_not_magic(problem):
    manifest, root = problem
    _, full = validate(manifest, root, _cfg(decode=True))
    _, header = validate(manifest, root, _cfg(decode=False))
    # PIL open + verify reads only up to the start of the scan data: the truncated JPEG passes.
    assert "train/0003_trunc.jpg" in full.error_files()
    assert "train/0003_trunc.jpg" not in header.error_files()
    assert _summary(header.errors) == [e for e in EXPECTED_ERRORS if e[0] != "corrupt_jpeg"]
    assert _summary(header.warnings) == EXPECTED_WARNINGS
    assert header.config["decode"] is False and "header-only" in header.to_text()


def test_truncated_header_fails_both_modes(tmp_path):
    data = _jpeg(5, (64, 32))
    manifest = _build(tmp_path, [("train/x.jpg", 1, "train", data[:20])], "cut")  # cut inside the header
    for decode in (True, False):
        _, report = validate(manifest, tmp_path, _cfg(decode=decode, min_images=0))
        assert _summary(report.errors) == [("corrupt_jpeg", ("train/x.jpg",), ())]
        assert "0x" not in report.errors[0].message  # no memory address in the (reproducible) message


@pytest.mark.parametrize("drop", [True, False])
def test_small_train_ids_dropped_or_kept(problem, drop):
    manifest, root = problem
    out, report = validate(manifest, root, _cfg(drop_small_ids=drop, min_images=2))
    small = [i for i in report.warnings if i.kind == "small_train_id"]
    assert [(i.pids, i.files) for i in small] == [((5,), ("train/0005_a.jpg",))]
    if drop:
        assert report.dropped_ids == ((5, 1),) and report.dropped_images == 1
        assert out.rows == tuple(r for r in manifest.rows if r.pid != 5)
        assert out.dataset == manifest.dataset
        assert small[0].message.endswith("; dropped")
        assert "## Dropped train ids" in report.to_text() and "| 5 | 1 |" in report.to_text()
    else:
        assert report.dropped_ids == () and out is manifest
        assert small[0].message.endswith("; kept")
        assert "Dropped train ids" not in report.to_text()


def test_min_images_threshold_counts_all_train_images(problem):
    manifest, root = problem
    out, report = validate(manifest, root, _cfg(min_images=3, drop_small_ids=True))
    # every train pid has 2 images except pid 5 (1): all are below 3
    expected = ((0, 2), (1, 2), (2, 2), (3, 2), (4, 2), (5, 1), (6, 2), (7, 2), (8, 2))
    assert report.dropped_ids == expected
    assert [i.pids[0] for i in report.warnings if i.kind == "small_train_id"] == [p for p, _ in expected]
    assert out.split("train") == () and out.rows == tuple(r for r in manifest.rows if r.split != "train")
    # the train/test overlap is still reported (it is a property of the input data)
    assert "pid_train_test" in [i.kind for i in report.errors]


def test_fatal_raises_listing_files_and_writes_nothing(problem, monkeypatch):
    manifest, root = problem
    monkeypatch.chdir(root.parent)
    before = _tree(root.parent)
    with pytest.raises(ValidationError) as info:
        validate(manifest, root, _cfg(fatal=True, drop_small_ids=True))
    assert _tree(root.parent) == before
    err = info.value
    text = str(err)
    for kind, files, _ in EXPECTED_ERRORS:
        for f in files:
            assert f in text
    assert "train/0005_a.jpg" not in text  # a warning, not an error
    assert "7 error(s)" in text and "not_jpeg 2" in text
    assert err.files == tuple(dict.fromkeys(f for _, files, _ in EXPECTED_ERRORS for f in files))
    assert _summary(err.report.errors) == EXPECTED_ERRORS
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == text and again.report == err.report


def test_fatal_does_not_raise_on_warnings_only(clean, tmp_path):
    manifest, root = clean
    out, report = validate(manifest, root, _cfg(fatal=True, min_images=3, drop_small_ids=True))
    assert report.errors == () and [i.kind for i in report.warnings] == ["small_train_id"] * 2
    assert out.split("train") == ()


def test_error_message_lists_first_50_files_then_count():
    errors = tuple(Issue("corrupt_jpeg", (f"train/{i:03d}.jpg",), f"train/{i:03d}.jpg: bad") for i in range(60))
    report = ValidationReport("big", "/data", {"min_images": 2, "drop_small_ids": False, "fatal": True,
                                               "decode": True}, 60, 60, {}, errors, ())
    text = str(ValidationError(report))
    assert "train/049.jpg" in text and "train/050.jpg" not in text
    assert "and 10 more file(s)" in text
    assert len(ValidationError(report).files) == 60


def test_to_text_mentions_every_problem(problem):
    manifest, root = problem
    _, report = validate(manifest, root, _cfg(drop_small_ids=True))
    text = report.to_text()
    assert text.startswith("# Data validation: problem\n")
    assert "FAILED: 7 error(s), 2 warning(s); dropped 1 train id(s) (1 images)" in text
    assert "| check | severity | count |" in text
    for kind in ERROR_KINDS:
        assert f"| {kind}: " in text and f"### {kind} (" in text
    for kind in WARNING_KINDS:
        assert f"### {kind} (" in text
    assert "| not_jpeg: not a JPEG (magic bytes) | error | 2 |" in text
    assert "| small_train_id: train id with < min_images images | warning | 1 |" in text
    for issue in report.errors + report.warnings:
        assert f"- {issue.message}\n" in text
        for f in issue.files:
            assert f"  - `{f}`\n" in text
    assert text.index("## Errors") < text.index("## Warnings") < text.index("## Dropped train ids")


def test_output_identical_for_one_and_two_workers(problem):
    manifest, root = problem
    out1, rep1 = validate(manifest, root, _cfg(workers=1, drop_small_ids=True))
    out2, rep2 = validate(manifest, root, _cfg(workers=2, drop_small_ids=True))
    assert out1.to_csv() == out2.to_csv() and out1.rows != manifest.rows
    assert json.dumps(rep1.to_json(), sort_keys=True) == json.dumps(rep2.to_json(), sort_keys=True)
    assert rep1.to_text() == rep2.to_text()
    assert rep1 == rep2
    assert _summary(rep2.errors) == EXPECTED_ERRORS  # not just equal: right, with 2 processes


def test_write_report_atomic(problem, tmp_path):
    manifest, root = problem
    _, report = validate(manifest, root, _cfg())
    txt, js = tmp_path / "out" / "validation.md", tmp_path / "out" / "validation.json"
    write_report(report, txt, js)
    assert txt.read_text(encoding="utf-8") == report.to_text()
    data = json.loads(js.read_text())
    assert data == report.to_json()
    assert data["summary"]["errors"] == 7 and data["summary"]["warnings"] == 2 and data["summary"]["ok"] is False
    assert [e["kind"] for e in data["errors"]] == [k for k, _, _ in EXPECTED_ERRORS]
    assert data["errors"][4]["files"] == ["train/0001_a.jpg", "gallery/0009_leak.jpg"]
    assert "workers" not in data["config"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["validation.json", "validation.md"]
    only_txt = tmp_path / "only" / "v.md"
    write_report(report, only_txt)
    assert [p.name for p in only_txt.parent.iterdir()] == ["v.md"]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="workers"):
        ValidationConfig(min_images=2, drop_small_ids=False, fatal=False, workers=0)
    with pytest.raises(ValueError, match="min_images"):
        ValidationConfig(min_images=-1, drop_small_ids=False, fatal=False)


def test_duplicate_groups_in_order_of_first_occurrence(tmp_path):
    x, y = _jpeg(1), _jpeg(2)
    spec = [("train/x1.jpg", 1, "train", x), ("train/y1.jpg", 2, "train", y), ("train/y2.jpg", 2, "train", y),
            ("train/x2.jpg", 1, "train", x), ("train/x3.jpg", 1, "train", x)]
    manifest = _build(tmp_path, spec, "dups")
    _, report = validate(manifest, tmp_path, _cfg())
    assert report.errors == ()
    assert _summary(report.warnings) == [("duplicate_same_pid", ("train/x1.jpg", "train/x2.jpg", "train/x3.jpg"), (1,)),
                                         ("duplicate_same_pid", ("train/y1.jpg", "train/y2.jpg"), (2,))]
    assert report.warnings[0].message.startswith("sha256 ") and "3 files with the same content" in report.warnings[0].message


def test_disabled_report_says_nothing_ran():
    from reid.data.manifest import Manifest, Row
    from reid.data.validation import disabled_report

    m = Manifest("d", (Row("a", "a.jpg", 1, 0, -1, "train"), Row("b", "b.jpg", 2, 0, -1, "query")))
    rep = disabled_report(m, "root")
    assert rep.ok and not rep.warnings and rep.files == 0
    assert rep.splits == {"train": {"images": 1, "pids": 1}, "query": {"images": 1, "pids": 1}}
    assert "Not run: data checks are disabled" in rep.to_text()
    assert rep.to_json()["config"] == {"enabled": False}
