"""Scratch space of a search's trials: one temporary run folder per trial, and its removal.

A trial trains in a run folder of its own (DeepSpeed checkpoints, hundreds of MB) under the
search's scratch root ``$TMPDIR/reid-search-<parent run id>`` on the node it runs on. What persists
is the ``tune.Checkpoint`` the trial reports, which Ray keeps in ``tune.storage_path``.

Removal cannot rest on the trial alone. When Ray stops a trial (ASHA, or ``max_epochs`` reached)
the trial function leaves ``tune.report`` with ``SystemExit``, but Ray ends the actor process
without waiting for the function to unwind, so the trial's own removal is often cut short: in
``dvc repro tune/dvc.yaml``, 7 of 8 trials left a partly deleted folder, with or without an
``atexit`` hook doing the removal too. Hence three layers:

1. the trial removes its folder on the way out (:func:`run_folder`);
2. a trial starting on a node first removes the folders there whose process has ended
   (:func:`remove_stale`; folder names carry host and pid);
3. the search, once every trial has ended, removes its whole scratch root on the driver's node
   (:func:`remove_root`): on one machine, everything.

On a cluster, the last trials on a node other than the driver's can leave their folders in that
node's scratch root; the next search's trials there do not see them (another root).

Ray's own trial folder is no place for the run folder: it lies in Ray's session folder
(``/tmp/ray/session_*``), which Ray never cleans, and Ray's driver copies it into ``storage_path``.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_log = logging.getLogger(__name__)

#: Run folders are ``<root>/trial-<pid>-<host>-<random>``; the random part has no ``-``.
PREFIX = "trial-"


def scratch_root(parent_run_id: str) -> Path:
    """The scratch root of the search whose MLflow parent run is ``parent_run_id``, in this node's
    temp folder (``$TMPDIR``, else ``/tmp``); the same name on every node."""
    return Path(tempfile.gettempdir()) / f"reid-search-{parent_run_id}"


def _owner(folder: Path) -> tuple[int, str] | None:
    """(pid, host) from a run folder's name, or None if it is not one."""
    name = folder.name
    if not name.startswith(PREFIX) or name.count("-") < 3:
        return None
    pid, _, rest = name[len(PREFIX):].partition("-")
    if not pid.isdigit():
        return None
    return int(pid), rest[:rest.rindex("-")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale(root: Path) -> list[Path]:
    """Remove the run folders under ``root`` made on this host by processes that have ended.

    Folders of other hosts (a scratch root on a shared file system) and of live processes are
    kept. Returns the folders removed.
    """
    host = socket.gethostname()
    removed = []
    for folder in sorted(Path(root).glob(f"{PREFIX}*")):
        owner = _owner(folder)
        if owner is not None and owner[1] == host and not _alive(owner[0]):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@contextmanager
def run_folder(root: Path) -> Iterator[Path]:
    """A new run folder under ``root`` (created if missing), removed on the way out.

    Stale folders of ended processes on this host are removed first (:func:`remove_stale`).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale(root)
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-{socket.gethostname()}-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_root(root: Path, wait_s: float = 30.0) -> bool:
    """Remove the scratch root ``root`` once the search's trials have ended.

    A stopped trial's process may still be deleting its folder while this runs, so the removal
    is retried every 0.5 s for up to ``wait_s`` seconds. Returns whether ``root`` is gone; if
    not, a warning names it (nothing is raised: the search's results are unaffected).
    """
    root = Path(root)
    deadline = time.monotonic() + wait_s
    while True:
        shutil.rmtree(root, ignore_errors=True)
        if not root.exists():
            return True
        if time.monotonic() > deadline:
            _log.warning("%s: could not remove the trials' scratch folder within %g s; remove it by hand",
                         root, wait_s)
            return False
        time.sleep(0.5)
