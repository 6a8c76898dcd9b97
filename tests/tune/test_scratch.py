"""``reid.tune.scratch``: trial run folders, and their removal however the trial ends."""

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from reid.tune import scratch


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_scratch_root_is_in_the_temp_folder_and_named_by_the_search(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    assert scratch.scratch_root("0123abcd") == tmp_path / "reid-search-0123abcd"


def test_run_folder_named_by_pid_and_host_and_removed_on_the_way_out(tmp_path):
    root = tmp_path / "reid-search-x"
    with scratch.run_folder(root) as path:
        assert path.parent == root
        assert path.name.startswith(f"trial-{os.getpid()}-{socket.gethostname()}-")
        assert scratch._owner(path) == (os.getpid(), socket.gethostname())
        (path / "checkpoints" / "epoch-0001").mkdir(parents=True)
        (path / "checkpoints" / "epoch-0001" / "mp_rank_00_model_states.pt").write_bytes(b"x" * 1000)
    assert list(root.iterdir()) == []
    with pytest.raises(FloatingPointError):
        with scratch.run_folder(root) as path:
            (path / "model.pt").write_bytes(b"x")
            raise FloatingPointError("nan loss")
    assert list(root.iterdir()) == []


def test_owner_parses_hosts_with_dashes_and_rejects_other_names(tmp_path):
    assert scratch._owner(tmp_path / "trial-123-gpu-node-7-ab_c9") == (123, "gpu-node-7")
    assert scratch._owner(tmp_path / "trial-123-host-x1y2") == (123, "host")
    for name in ("trial-abc-host-x1y2", "trial-123-x1y2", "other-123-host-x1y2", "checkpoints"):
        assert scratch._owner(tmp_path / name) is None


def test_remove_stale_takes_only_ended_processes_of_this_host(tmp_path):
    host, dead = socket.gethostname(), _dead_pid()
    stale = tmp_path / f"trial-{dead}-{host}-abc1"
    live = tmp_path / f"trial-{os.getpid()}-{host}-abc2"
    elsewhere = tmp_path / f"trial-{dead}-{host}x-abc3"  # another host on a shared file system
    unknown = tmp_path / "notes"
    for folder in (stale, live, elsewhere, unknown):
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints" / "f.pt").write_bytes(b"x")
    assert scratch.remove_stale(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, elsewhere, unknown))


def test_a_new_trial_sweeps_the_folder_a_stopped_trial_left(tmp_path):
    # What Ray does to a stopped trial: the process ends while the trial function is still inside
    # run_folder (here: killed outright), so the folder stays until the next trial on the node.
    root = tmp_path / "reid-search-x"
    code = ("import os, sys\nfrom reid.tune.scratch import run_folder\n"
            f"with run_folder({str(root)!r}) as p:\n"
            "    (p / 'model_states.pt').write_bytes(b'x' * 1000)\n"
            "    print(p, flush=True)\n"
            "    os._exit(0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[2])
    left = list(root.iterdir())
    assert proc.returncode == 0 and [str(p) for p in left] == [proc.stdout.strip()], proc.stderr
    with scratch.run_folder(root) as path:
        assert list(root.iterdir()) == [path]
    assert list(root.iterdir()) == []


def test_remove_root(tmp_path, monkeypatch, caplog):
    root = tmp_path / "reid-search-x"
    (root / f"trial-{os.getpid()}-{socket.gethostname()}-abc").mkdir(parents=True)  # a live owner too
    assert scratch.remove_root(root) is True and not root.exists()
    assert scratch.remove_root(root) is True  # already gone
    root.mkdir()
    monkeypatch.setattr(scratch.shutil, "rmtree", lambda *a, **k: None)  # cannot remove
    with caplog.at_level(logging.WARNING, logger="reid.tune.scratch"):
        assert scratch.remove_root(root, wait_s=0.0) is False
    assert str(root) in caplog.text and "remove it by hand" in caplog.text
