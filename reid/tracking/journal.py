"""Offline MLflow journal: what :class:`reid.tracking.mlflow_run.MlflowRun` records while the
tracking server is unreachable, and the replay that syncs it into a server later.

Layout (one journal per offline episode of a run, inside a run folder's ``mlflow_journal/``)::

    runs/<dataset>/mlflow_journal/
        <id>.jsonl            append-only, one JSON object per call, flushed and fsynced per line
        <id>/artifacts/<n>/   copies of the logged artifact files (so deleting the originals loses nothing)
        <id>/models/<n>/      model.pt + model.json of an offline ``log_model`` (``reid.engine.trainer.load_model``)
        <id>.progress.json    written by the sync: lines replayed so far, the run id (resume after a crash)

Line 1 is the header ``{"type": "header", "version": 1, "journal_id", "tracking_uri", "experiment",
"run_name", "run_id" (null: the run does not exist on the server yet), "tags", "created_ms"}``; the
other lines are ``params`` (``{"params": {key: str}}``), ``metrics`` (``{"metrics": {key: float},
"step": int|null, "timestamp_ms": int}``), ``artifact`` (``{"file", "artifact_path"}``), ``model``
(``{"dir", "meta", "registered_name"}``), ``reopen`` (a later process continued the run: status
RUNNING again, ``tags``) and ``end`` (``{"status", "timestamp_ms"}``). Paths are relative to the
journal folder. The writing process holds an exclusive ``flock`` on the ``.jsonl`` file, so a sync
never replays a journal that is still growing.

:func:`sync_journals` replays every journal of a run folder in creation order into the tracking
server (the header's URI or another one), then records ``journal id -> run id, model URI`` in
``runs/<dataset>/mlflow_synced.json`` and deletes the journal. ``mlflow_run.json`` itself is not
rewritten (it is a DVC output of ``train``: changing it would make ``dvc repro`` train again);
:func:`read_run_file` applies the sync record when it reads the run file.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence
from urllib.parse import urlparse

from reid.io import atomic_open, atomic_write_json

#: Name of the journal folder inside a run folder.
JOURNAL_DIR = "mlflow_journal"
#: Name of the sync record inside a run folder (journal id -> run id, model URI).
SYNC_RECORD = "mlflow_synced.json"
#: Journal format version (line 1, ``version``).
FORMAT_VERSION = 1
#: Seconds the reachability probe (``GET <uri>/health``) waits for an answer.
PROBE_TIMEOUT_S = 5.0
#: Tag set on a run created by a sync: the journal it came from (makes run creation idempotent).
JOURNAL_TAG = "reid.journal_id"

_RECORD_FIELDS = {
    "params": ("params",),
    "metrics": ("metrics", "step", "timestamp_ms"),
    "artifact": ("file", "artifact_path"),
    "model": ("dir", "meta", "registered_name"),
    "reopen": ("tags",),
    "end": ("status", "timestamp_ms"),
}
_HEADER_FIELDS = ("version", "journal_id", "tracking_uri", "experiment", "run_name", "run_id", "tags", "created_ms")
#: MLflow's limits on params and metrics per ``log_batch`` request.
MAX_BATCH_PARAMS, MAX_BATCH_METRICS = 100, 1000


class JournalError(Exception):
    """A journal cannot be written, read or synced (the message names the file, line or URI)."""


def now_ms() -> int:
    """Wall-clock time in ms since the epoch (MLflow's timestamp unit)."""
    return int(time.time() * 1000)


def log_batches(client, run_id: str, params: Sequence = (), metrics: Sequence = ()) -> None:
    """Log ``params`` (``mlflow.entities.Param``), then ``metrics`` (``Metric``) into ``run_id``,
    synchronously, in as many ``log_batch`` requests as :data:`MAX_BATCH_PARAMS` /
    :data:`MAX_BATCH_METRICS` need.

    Raises:
        mlflow.exceptions.MlflowException: the store refused a request or could not be reached.
    """
    for i in range(0, len(params), MAX_BATCH_PARAMS):
        client.log_batch(run_id, params=list(params[i:i + MAX_BATCH_PARAMS]), synchronous=True)
    for i in range(0, len(metrics), MAX_BATCH_METRICS):
        client.log_batch(run_id, metrics=list(metrics[i:i + MAX_BATCH_METRICS]), synchronous=True)


def reopen_run(client, run_id: str, tags: Mapping[str, object]) -> None:
    """Continue an existing run as ``mlflow.start_run(run_id=...)`` does: set ``tags`` on it and
    mark it RUNNING.

    Raises:
        mlflow.exceptions.MlflowException: unknown run, or the store could not be reached.
    """
    from mlflow.entities import RunTag

    if tags:
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    client.update_run(run_id, status="RUNNING")


def sync_command(journal_dir: Path) -> str:
    """The command that syncs the journals in ``journal_dir`` (its parent is the run folder)."""
    return f"python -m pipeline.mlflow_sync {Path(journal_dir).parent}"


def is_remote(tracking_uri: str) -> bool:
    """Whether ``tracking_uri`` names a tracking server (http/https) rather than a local store."""
    return urlparse(tracking_uri).scheme in ("http", "https")


def probe(tracking_uri: str, timeout: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """Ask a tracking server whether it is up: ``GET <uri>/health``, no retries.

    Returns:
        None when the server answers (any status below 500), else why not (connection refused,
        timeout, HTTP 5xx), in words. TLS follows MLflow's ``MLFLOW_TRACKING_INSECURE_TLS`` and
        ``MLFLOW_TRACKING_SERVER_CERT_PATH``.
    """
    import requests

    verify: object = True
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        verify = False
    elif os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        verify = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    try:
        r = requests.get(tracking_uri.rstrip("/") + "/health", timeout=timeout, verify=verify)
    except requests.exceptions.ConnectionError as err:
        return f"cannot connect: {_first_line(err)}"
    except requests.exceptions.Timeout:
        return f"no answer within {timeout:g} s"
    except requests.exceptions.RequestException as err:
        return _first_line(err)
    return f"HTTP {r.status_code} from /health" if r.status_code >= 500 else None


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]


# --------------------------------------------------------------------------------------------- writing


class JournalWriter:
    """Appends the calls of one run to ``<journal_dir>/<journal_id>.jsonl`` (see the module doc).

    Create one with :meth:`create` (new journal) or :meth:`reopen` (continue a journal, e.g.
    ``evaluate`` after an offline ``train``). The instance holds an exclusive ``flock`` on the file
    until :meth:`close`.
    """

    def __init__(self, journal_dir: Path, journal_id: str, fd: int, header: dict, lines: int):
        self.journal_dir, self.journal_id, self.header = Path(journal_dir), journal_id, header
        self._fd, self._lines = fd, lines

    @property
    def path(self) -> Path:
        """The ``.jsonl`` file."""
        return self.journal_dir / f"{self.journal_id}.jsonl"

    @property
    def run_id(self) -> Optional[str]:
        """The run id on the server, or None when the run exists only in this journal."""
        return self.header["run_id"]

    @classmethod
    def create(cls, journal_dir: Path, tracking_uri: str, experiment: str, run_name: Optional[str],
               run_id: Optional[str], tags: Mapping[str, str]) -> "JournalWriter":
        """Start a journal with its header line (the file appears atomically, header included).

        Raises:
            OSError: the folder cannot be written.
        """
        journal_dir = Path(journal_dir)
        journal_dir.mkdir(parents=True, exist_ok=True)
        journal_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        header = {"type": "header", "version": FORMAT_VERSION, "journal_id": journal_id,
                  "tracking_uri": tracking_uri, "experiment": experiment, "run_name": run_name,
                  "run_id": run_id, "tags": {k: str(v) for k, v in tags.items()}, "created_ms": now_ms()}
        tmp = journal_dir / f".{journal_id}.jsonl.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_line(fd, header)
            os.replace(tmp, journal_dir / f"{journal_id}.jsonl")
            _fsync_dir(journal_dir)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return cls(journal_dir, journal_id, fd, header, 1)

    @classmethod
    def reopen(cls, journal_dir: Path, journal_id: str) -> "JournalWriter":
        """Continue ``<journal_dir>/<journal_id>.jsonl``.

        Raises:
            JournalError: the journal is missing (synced already, or deleted), its header is
                unreadable, or another process is writing or syncing it.
        """
        path = Path(journal_dir) / f"{journal_id}.jsonl"
        if not path.is_file():
            raise JournalError(f"{path}: MLflow journal not found (synced already? see {SYNC_RECORD} "
                               f"in {Path(journal_dir).parent})")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            _lock(fd, path)
            header, records = read_journal(path)
        except BaseException:
            os.close(fd)
            raise
        return cls(journal_dir, journal_id, fd, header, 1 + len(records))

    def append(self, record: dict) -> None:
        """Append one call (``record["type"]`` one of the module doc's), flushed and fsynced."""
        _write_line(self._fd, record)
        self._lines += 1

    def params(self, params: Mapping[str, str]) -> None:
        """Record ``log_params`` (values already strings)."""
        self.append({"type": "params", "params": dict(params)})

    def metrics(self, metrics: Mapping[str, float], step: Optional[int], timestamp_ms: Optional[int] = None) -> None:
        """Record ``log_metrics`` with its step and wall-clock time (ms since the epoch; default now)."""
        self.append({"type": "metrics", "metrics": dict(metrics), "step": step,
                     "timestamp_ms": now_ms() if timestamp_ms is None else int(timestamp_ms)})

    def artifact(self, path: Path, artifact_path: Optional[str]) -> None:
        """Copy ``path`` (a file) into the journal atomically, then record ``log_artifact``.

        Raises:
            FileNotFoundError: ``path`` is not a file.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not a file (log_artifact takes one file)")
        rel = Path(self.journal_id) / "artifacts" / str(self._lines + 1) / path.name
        with path.open("rb") as src, atomic_open(self.journal_dir / rel) as dst:
            shutil.copyfileobj(src, dst)
        self.append({"type": "artifact", "file": rel.as_posix(), "artifact_path": artifact_path})

    def model(self, module, meta: Mapping, registered_name: Optional[str]) -> None:
        """Save ``module``'s weights and ``meta`` as ``model.pt``/``model.json`` in the journal
        (``meta`` as :func:`reid.engine.trainer.model_meta` writes it, so that
        :func:`reid.engine.trainer.load_model` rebuilds the module at sync), then record ``log_model``."""
        from reid.engine.trainer import save_model

        rel = Path(self.journal_id) / "models" / str(self._lines + 1)
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        save_model(state, self.journal_dir / rel, dict(meta))
        self.append({"type": "model", "dir": rel.as_posix(), "meta": dict(meta), "registered_name": registered_name})

    def close(self) -> None:
        """Release the lock (the journal stays, for a later sync or :meth:`reopen`)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _write_line(fd: int, obj: dict) -> None:
    data = (json.dumps(obj, sort_keys=True) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]
    os.fsync(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(fd: int, path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise JournalError(f"{path}: in use by another process (a run still logging to it, or a sync)") from None


# --------------------------------------------------------------------------------------------- reading


def read_journal(path: Path) -> tuple[dict, list[tuple[int, dict]]]:
    """Parse and check a journal.

    Returns:
        ``(header, [(line number, record), ...])``, line numbers 1-based (the header is line 1).

    Raises:
        JournalError: empty file, a line that is not a JSON object, a bad header or record
            (names ``file:line``), or an artifact/model copy missing from the journal folder.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise JournalError(f"{path}: empty MLflow journal (no header line)")
    parsed = []
    for n, text in enumerate(lines, start=1):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise JournalError(f"{path}:{n}: corrupt journal line (not JSON: {err.msg}); "
                               "fix or delete that line, then sync again") from None
        if not isinstance(obj, dict):
            raise JournalError(f"{path}:{n}: corrupt journal line (not a JSON object)")
        parsed.append((n, obj))
    (_, header), records = parsed[0], parsed[1:]
    missing = [k for k in _HEADER_FIELDS if k not in header]
    if header.get("type") != "header" or missing:
        raise JournalError(f"{path}:1: not a journal header (type {header.get('type')!r}, missing {missing})")
    if header["version"] != FORMAT_VERSION:
        raise JournalError(f"{path}:1: journal version {header['version']!r}; this code reads {FORMAT_VERSION}")
    for n, rec in records:
        kind = rec.get("type")
        if kind not in _RECORD_FIELDS:
            raise JournalError(f"{path}:{n}: corrupt journal line (unknown type {kind!r})")
        lacking = [k for k in _RECORD_FIELDS[kind] if k not in rec]
        if lacking:
            raise JournalError(f"{path}:{n}: corrupt journal line ({kind} without {lacking})")
        if kind in ("artifact", "model"):
            target = path.parent / (rec["file"] if kind == "artifact" else rec["dir"])
            if not target.exists():
                raise JournalError(f"{path}:{n}: {target} is missing from the journal folder")
    return header, records


def read_run_file(path: Path) -> dict:
    """Read a run file (``runs/<dataset>/mlflow_run.json``) with the sync record applied.

    Returns:
        ``{"run_id", "tracking_uri", "offline", "journal_id", "model_uri", ...}``: ``offline`` True
        while the run's newest calls are only in ``mlflow_journal/<journal_id>.jsonl``; once that
        journal is synced (``mlflow_synced.json`` beside it), the run id, URI and model URI of the
        sync, with ``offline`` False. Run files written before the journal existed read as online.

    Raises:
        FileNotFoundError: no run file.
        JournalError: the run file or the sync record is not a JSON object (names the file).
    """
    path = Path(path)
    info = _read_json_object(path)
    info.setdefault("offline", False)
    info.setdefault("journal_id", None)
    info.setdefault("model_uri", None)
    record_path = path.parent / SYNC_RECORD
    if info["offline"] and info["journal_id"] and record_path.is_file():
        synced = _read_json_object(record_path).get(info["journal_id"])
        if synced is not None:
            info.update(run_id=synced["run_id"], tracking_uri=synced["tracking_uri"], offline=False,
                        journal_id=None, model_uri=synced.get("model_uri") or info["model_uri"])
    return info


def _read_json_object(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise JournalError(f"{path}: not JSON ({err})") from None
    if not isinstance(obj, dict):
        raise JournalError(f"{path}: expected a JSON object")
    return obj


# --------------------------------------------------------------------------------------------- sync


@dataclass(frozen=True)
class SyncResult:
    """One synced journal: the file, the run it went into, the server, the last model URI, and how
    many calls (lines after the header) were replayed by this sync."""

    journal: Path
    run_id: str
    tracking_uri: str
    model_uri: Optional[str]
    replayed: int


def pending_journals(run_dir: Path) -> list[Path]:
    """The ``.jsonl`` journals of a run folder, oldest first (by header ``created_ms``, then name).

    Raises:
        JournalError: ``run_dir`` is not a folder, or it has no journal.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise JournalError(f"{run_dir}: not a folder (expected a run folder such as runs/<dataset>)")
    files = sorted((run_dir / JOURNAL_DIR).glob("*.jsonl"))
    if not files:
        raise JournalError(f"{run_dir}: no MLflow journal to sync ({run_dir / JOURNAL_DIR}/*.jsonl: none)")

    def created(p: Path):
        try:
            first = json.loads(p.open(encoding="utf-8").readline())
            return (int(first.get("created_ms", 0)), p.name)
        except (ValueError, AttributeError):
            return (0, p.name)  # read_journal reports the corrupt header when its turn comes

    return sorted(files, key=created)


def sync_journals(run_dir: Path, tracking_uri: Optional[str] = None,
                  log: Callable[[str], None] = print) -> list[SyncResult]:
    """Replay every journal of ``run_dir`` (see :func:`pending_journals`) into MLflow.

    Per journal: create the run (journal started offline; tagged ``reid.journal_id`` so a retried
    sync finds it instead of creating a second one) or continue the header's run id; replay params
    and metrics (original steps and timestamps) through ``MlflowClient.log_batch``, artifacts, model
    logging and registration, ``reopen``/``end`` statuses, in order. After each replayed group,
    ``<id>.progress.json`` records the lines done, so a sync that stops (crash, server gone) resumes
    where it stopped; the group in flight may be sent twice, which MLflow absorbs for params,
    metrics, artifacts and statuses (same values); a model line in flight at a crash may be logged
    twice (a second model version). Then the sync record gets ``journal id -> run id, URI, model URI``
    and the journal is moved to a hidden folder and deleted (the folder too once empty).

    Args:
        run_dir: run folder (``runs/<dataset>``) holding ``mlflow_journal/``.
        tracking_uri: server to sync into; default: each journal's own (the header's) URI.
        log: receives one progress line per journal.

    Raises:
        JournalError: no journal; a journal in use; a corrupt line (``file:line``); the server
            unreachable (names the URI; nothing more is replayed, progress is kept); a journal
            partly synced into another server; a replayed call refused by the server (``file:line``).
    """
    run_dir = Path(run_dir)
    for leftover in (run_dir / JOURNAL_DIR).glob(".synced-*"):
        shutil.rmtree(leftover)  # a journal recorded as synced whose deletion was cut short
    results = []
    for path in pending_journals(run_dir):
        results.append(_sync_one(run_dir, path, tracking_uri))
        r = results[-1]
        log(f"{path}: {r.replayed} call(s) replayed into run {r.run_id} at {r.tracking_uri}"
            + (f"; model {r.model_uri}" if r.model_uri else ""))
    if (run_dir / JOURNAL_DIR).is_dir() and not any((run_dir / JOURNAL_DIR).iterdir()):
        (run_dir / JOURNAL_DIR).rmdir()
    return results


def _sync_one(run_dir: Path, path: Path, target: Optional[str]) -> SyncResult:
    import mlflow
    from mlflow.tracking import MlflowClient

    fd = os.open(path, os.O_RDONLY)
    try:
        _lock(fd, path)
        header, records = read_journal(path)
        uri = target or header["tracking_uri"]
        if is_remote(uri) and (reason := probe(uri)) is not None:
            raise JournalError(f"MLflow tracking server {uri} is still unreachable ({reason}); {path} is kept, "
                               "sync again once the server is up")
        progress_path = path.with_suffix(".progress.json")
        progress = _read_json_object(progress_path) if progress_path.is_file() else {}
        if progress and progress["tracking_uri"] != uri:
            raise JournalError(f"{progress_path}: {path} was partly synced into {progress['tracking_uri']}, "
                               f"not {uri}; finish that sync (--tracking-uri {progress['tracking_uri']})")
        mlflow.set_tracking_uri(uri)  # log_model/registration resolve the global URI
        replay = _Replay(MlflowClient(uri), uri, path, header, progress)
        done_before = progress.get("lines", 0)
        replay.start()
        replay.records(records)
        result = SyncResult(path, replay.run_id, uri, replay.model_uri, sum(1 for n, _ in records if n > done_before))
        _record_sync(run_dir, header["journal_id"], result)
        trash = path.parent / f".synced-{header['journal_id']}"
        trash.mkdir(exist_ok=True)
        for p in (path, progress_path, path.parent / header["journal_id"]):
            if p.exists():
                os.replace(p, trash / p.name)
        shutil.rmtree(trash)
        return result
    finally:
        os.close(fd)


def _record_sync(run_dir: Path, journal_id: str, result: SyncResult) -> None:
    record_path = run_dir / SYNC_RECORD
    record = _read_json_object(record_path) if record_path.is_file() else {}
    record[journal_id] = {"run_id": result.run_id, "tracking_uri": result.tracking_uri,
                          "model_uri": result.model_uri, "synced_ms": now_ms()}
    atomic_write_json(record_path, record)


class _Replay:
    """Replays one journal's lines; ``progress`` (``lines`` done, ``run_id``, ``model_uri``) is
    rewritten atomically after each step."""

    def __init__(self, client, uri: str, path: Path, header: dict, progress: dict):
        self.client, self.uri, self.path, self.header = client, uri, path, header
        self.progress_path = path.with_suffix(".progress.json")
        self.done = progress.get("lines", 0)
        self.run_id: Optional[str] = progress.get("run_id") or header["run_id"]
        self.model_uri: Optional[str] = progress.get("model_uri")

    def _save(self, lines: int) -> None:
        self.done = lines
        atomic_write_json(self.progress_path, {"lines": lines, "run_id": self.run_id, "model_uri": self.model_uri,
                                               "tracking_uri": self.uri})

    def _call(self, line: int, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if is_remote(self.uri) and (reason := probe(self.uri)) is not None:
                raise JournalError(f"MLflow tracking server {self.uri} became unreachable ({reason}) while "
                                   f"syncing {self.path} at line {line}; {self.done} line(s) done are "
                                   "recorded, sync again once the server is up") from err
            raise JournalError(f"{self.path}:{line}: replay refused by {self.uri}: {_first_line(err)}") from err

    def start(self) -> None:
        """Line 1: create the run (or find the one a previous sync created), or resume the header's."""
        if self.done >= 1:
            return
        h = self.header
        if self.run_id is None:
            from reid.tracking.mlflow_run import experiment_id  # mlflow_run imports this module

            exp_id = self._call(1, experiment_id, self.client, h["experiment"])
            found = self._call(1, self.client.search_runs, [exp_id],
                               filter_string=f"tags.`{JOURNAL_TAG}` = '{h['journal_id']}'")
            if found:
                self.run_id = found[0].info.run_id
            else:
                run = self._call(1, self.client.create_run, exp_id, start_time=h["created_ms"],
                                 tags={**h["tags"], JOURNAL_TAG: h["journal_id"]}, run_name=h["run_name"])
                self.run_id = run.info.run_id
        else:
            self._call(1, self.client.get_run, self.run_id)  # names the run when this server lacks it
            self._call(1, reopen_run, self.client, self.run_id, h["tags"])
        self._save(1)

    def records(self, records: list[tuple[int, dict]]) -> None:
        from mlflow.entities import Metric, Param

        todo = [(n, r) for n, r in records if n > self.done]
        i = 0
        while i < len(todo):
            n, rec = todo[i]
            kind = rec["type"]
            if kind in ("params", "metrics"):
                # a run of consecutive params/metrics lines goes out in log_batch requests
                params, metrics, last = [], [], n
                while i < len(todo) and todo[i][1]["type"] in ("params", "metrics"):
                    last, r = todo[i]
                    if r["type"] == "params":
                        params += [Param(k, str(v)) for k, v in r["params"].items()]
                    else:
                        metrics += [Metric(k, float(v), int(r["timestamp_ms"]), int(r["step"] or 0))
                                    for k, v in r["metrics"].items()]
                    i += 1
                self._call(n, log_batches, self.client, self.run_id, params, metrics)
                self._save(last)
                continue
            if kind == "artifact":
                self._call(n, self.client.log_artifact, self.run_id, str(self.path.parent / rec["file"]),
                           rec["artifact_path"])
            elif kind == "model":
                self.model_uri = self._log_model(n, rec)
            elif kind == "reopen":
                self._call(n, reopen_run, self.client, self.run_id, rec["tags"])
            elif kind == "end":
                self._call(n, self.client.set_terminated, self.run_id, rec["status"], rec["timestamp_ms"])
            self._save(n)
            i += 1

    def _log_model(self, line: int, rec: dict) -> str:
        from reid.engine.trainer import load_model
        from reid.tracking.mlflow_run import log_pytorch_model

        try:
            module, _ = load_model(self.path.parent / rec["dir"])
        except (OSError, RuntimeError, KeyError, ValueError) as err:
            raise JournalError(f"{self.path}:{line}: cannot rebuild the journaled model: {err}") from err
        return self._call(line, log_pytorch_model, module, rec["meta"], rec["registered_name"], self.run_id)
