"""Compare the registered re-ID models across datasets and protocols, from the MLflow registry.

Every model version of the registry (``reid-<dataset>``, one version per training run or search)
points at its source run. :func:`collect` reads those runs and builds a :class:`ComparisonTable`:
one row per model version, one column per (dataset or cross-dataset target, set, metric) for
Rank-1, mAP and mINP. The runs hold the metrics as ``pipeline.evaluate`` logs them:

- ``<set>.<metric>`` (and ``<set>.<metric>_std`` over gallery draws): the model on the test sets of
  the dataset it was trained on, named by the run's ``dataset`` tag (``query_gallery`` for fixed
  query/gallery protocols, ``test_1000`` ... ``test_full`` for drawn galleries, ``<set>_rerank``
  re-ranked);
- ``cross.<target>.<set>.<metric>``: the model on another dataset (:func:`log_cross_metrics`,
  written by ``pipeline.evaluate --model models:/...``);

while ``untrained.*`` (the baseline), ``val.*`` (validation during training) and the training
curves are not compared. Values are fractions in [0, 1]; the console and Markdown tables print
them as percentages with one decimal (``mean ± std`` where the run has a ``_std`` companion), the
CSV keeps the raw fractions.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, Mapping, Optional, Sequence, Union

from reid.io import atomic_write_text
from reid.tracking.journal import log_batches, now_ms

#: The compared metrics, in column order, and their display names.
METRICS = ("rank1", "mAP", "mINP")
METRIC_LABELS = {"rank1": "Rank-1", "mAP": "mAP", "mINP": "mINP"}
#: Default registered-model filter: names starting with this prefix (``pipeline.train`` registers
#: ``reid-<dataset>``).
DEFAULT_PREFIX = "reid-"
#: First component of the cross-dataset metric names.
CROSS = "cross"
#: Metric name prefixes that are never compared (baseline, validation during training).
_EXCLUDED = ("untrained", "val")
#: What MLflow accepts in a metric name (``mlflow.utils.validation``), without ``/`` and ``.``.
_TARGET_RE = re.compile(r"[\w\- :]+")
_STD = "_std"
_PARENT_TAG = "mlflow.parentRunId"  # MLflow's nested-run tag
_RUN_ID_CHARS = 8  # run ids in the console table are shortened to this many characters


class CompareError(ValueError):
    """Nothing to compare, or registry/run data that cannot be placed in the table; the message
    names the tracking URI, the filter or the model version."""


@dataclass(frozen=True)
class Column:
    """One metric column.

    Attributes:
        kind: ``dataset`` (the model on the dataset it was trained on) or ``cross``.
        target: the dataset key (run tag ``dataset``) or the cross-dataset target name.
        set: the protocol set (``query_gallery``, ``test_1000``, ``test_1000_rerank``, ...).
        metric: ``rank1``, ``mAP`` or ``mINP``.
    """

    kind: Literal["dataset", "cross"]
    target: str
    set: str
    metric: str

    @property
    def key(self) -> str:
        """The CSV column name: ``<target>.<set>.<metric>`` or ``cross.<target>.<set>.<metric>``."""
        base = f"{self.target}.{self.set}.{self.metric}"
        return f"{CROSS}.{base}" if self.kind == CROSS else base

    @property
    def header(self) -> str:
        """Display header, one line per part: target (``cross: `` prefixed), set, metric label."""
        target = f"{CROSS}: {self.target}" if self.kind == CROSS else self.target
        return f"{target}\n{self.set}\n{METRIC_LABELS[self.metric]}"

    def sort_key(self) -> tuple:
        """In-domain columns first, then cross; targets and sets in natural order (``test_2000``
        before ``test_10000``), metrics in :data:`METRICS` order."""
        return (self.kind != "dataset", _natural(self.target), _natural(self.set), METRICS.index(self.metric))


@dataclass(frozen=True)
class Cell:
    """A metric value: ``mean`` (a fraction), and ``std`` over gallery draws when the run has one."""

    mean: float
    std: Optional[float] = None

    @property
    def text(self) -> str:
        """``57.6%``, or ``60.9 ± 3.7%`` with a std (percent, one decimal)."""
        if self.std is None:
            return f"{100 * self.mean:.1f}%"
        return f"{100 * self.mean:.1f} ± {100 * self.std:.1f}%"


@dataclass(frozen=True)
class ModelRow:
    """One registered model version and what its source run scored.

    Attributes:
        name, version: the registered model and its version number.
        aliases: the version's registry aliases, sorted.
        stage: the (legacy) registry stage, ``""`` for none.
        dataset: the source run's ``dataset`` tag, else its nearest parent run's (tag
            ``mlflow.parentRunId``: a Ray Tune trial's search run); ``""`` without one.
        model_name: the ``model.name`` param of the same lineage (``""`` without one).
        search, trial: the version's ``search`` / ``trial`` tags (Ray Tune), ``""`` without.
        run_id: the source run (``""`` for a version registered without one).
        cells: column -> value; a column missing here is an empty cell.
    """

    name: str
    version: int
    aliases: tuple[str, ...]
    stage: str
    dataset: str
    model_name: str
    search: str
    trial: str
    run_id: str
    cells: Mapping[Column, Cell]


#: Row fields: (CSV column, display header, ModelRow attribute).
_INFO = (("name", "model", "name"), ("version", "version", "version"), ("aliases", "aliases", "aliases"),
         ("stage", "stage", "stage"), ("dataset", "dataset", "dataset"), ("model.name", "model.name", "model_name"),
         ("search", "search", "search"), ("trial", "trial", "trial"), ("run_id", "run", "run_id"))


@dataclass(frozen=True)
class ComparisonTable:
    """Rows (sorted by registered model name, then version) and metric columns (sorted by
    :meth:`Column.sort_key`) of a comparison, and the tracking URI it was read from."""

    tracking_uri: str
    rows: tuple[ModelRow, ...]
    columns: tuple[Column, ...]

    def _info_text(self, row: ModelRow, attr: str, short_run_id: bool = False) -> str:
        value = getattr(row, attr)
        if attr == "aliases":
            return ", ".join(f"@{a}" for a in value)
        if attr == "run_id" and short_run_id:
            return value[:_RUN_ID_CHARS]
        return str(value)

    def _shown_info(self) -> list[tuple[str, str, str]]:
        """Info fields for display: the optional ones (aliases, stage, search, trial) only when some
        row has a value."""
        optional = {"aliases", "stage", "search", "trial"}
        return [f for f in _INFO if f[2] not in optional or any(getattr(r, f[2]) for r in self.rows)]

    def cell_text(self, row: ModelRow, column: Column) -> str:
        """The display text of one cell (:attr:`Cell.text`), ``""`` when the run lacks the metric."""
        cell = row.cells.get(column)
        return "" if cell is None else cell.text

    def csv_text(self) -> str:
        """The table as CSV: the row fields (``name, version, aliases, stage, dataset, model.name,
        search, trial, run_id``; aliases joined by spaces), then per column its raw mean fraction
        under :attr:`Column.key`, followed by ``<key>_std`` when some row has a std for it. Missing
        values are empty."""
        with_std = {c for c in self.columns if any(r.cells.get(c) and r.cells[c].std is not None for r in self.rows)}
        header = [f[0] for f in _INFO]
        for c in self.columns:
            header += [c.key] + ([c.key + _STD] if c in with_std else [])
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        for r in self.rows:
            line = [" ".join(r.aliases) if f[2] == "aliases" else getattr(r, f[2]) for f in _INFO]
            for c in self.columns:
                cell = r.cells.get(c)
                line.append("" if cell is None else repr(cell.mean))
                if c in with_std:
                    line.append("" if cell is None or cell.std is None else repr(cell.std))
            writer.writerow(line)
        return buf.getvalue()

    def markdown(self) -> str:
        """The table as GitHub Markdown (percent cells as :meth:`cell_text`, full run ids), under a
        line naming the tracking URI."""
        info = self._shown_info()
        header = [f[1] for f in info] + [c.header.replace("\n", " ") for c in self.columns]
        align = ["---"] * len(info) + ["---:"] * len(self.columns)
        lines = [f"Registered models in `{self.tracking_uri}`: Rank-1 / mAP / mINP in %, "
                 "mean ± std over gallery draws where a protocol has several.", "",
                 _md_row(header), _md_row(align)]
        for r in self.rows:
            lines.append(_md_row([self._info_text(r, f[2]) for f in info]
                                 + [self.cell_text(r, c) for c in self.columns]))
        return "\n".join(lines) + "\n"

    def rich_table(self):
        """The table as a :class:`rich.table.Table` (run ids shortened to 8 characters; headers on
        three lines: target, set, metric)."""
        from rich.table import Table
        from rich.text import Text

        table = Table(title=f"Registered models ({self.tracking_uri}), %", title_justify="left")
        info = self._shown_info()
        for f in info:
            table.add_column(f[1], no_wrap=True)
        for c in self.columns:
            table.add_column(c.header, justify="right", no_wrap=True)
        for r in self.rows:
            # Text, not str: no rich markup in names or tags is interpreted.
            table.add_row(*[Text(self._info_text(r, f[2], short_run_id=True)) for f in info],
                          *[Text(self.cell_text(r, c)) for c in self.columns])
        return table


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _natural(text: str) -> tuple:
    parts = re.split(r"(\d+)", text)
    return tuple((int(p), "") if p.isdigit() else (-1, p.lower()) for p in parts) + ((-1, text),)


def _parse_metric(key: str) -> Optional[tuple[str, Optional[str], str, str, bool]]:
    """``(kind, target or None, set, metric, is_std)`` of a compared metric name, else None."""
    parts = key.split(".")
    if parts[0] == CROSS:
        if len(parts) != 4:
            return None
        kind, target, set_, metric = CROSS, parts[1], parts[2], parts[3]
    elif len(parts) == 2 and parts[0] not in _EXCLUDED:
        kind, target, (set_, metric) = "dataset", None, parts
    else:
        return None
    is_std = metric.endswith(_STD)
    metric = metric[: -len(_STD)] if is_std else metric
    if metric not in METRICS:
        return None
    return kind, target, set_, metric, is_std


def _client(client_or_uri):
    if isinstance(client_or_uri, str):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=client_or_uri)
    return client_or_uri


def _all_pages(search, **kwargs) -> list:
    out, token = [], None
    while True:
        page = search(page_token=token, **kwargs)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _registered_models(client, names: Optional[Sequence[str]], prefix: str) -> list:
    from mlflow.exceptions import MlflowException

    uri = client.tracking_uri
    registered = _all_pages(client.search_registered_models)
    known = sorted(m.name for m in registered)
    if names is None:
        models = [m for m in registered if m.name.startswith(prefix)]
        if not models:
            raise CompareError(f"{uri}: no registered model name starts with {prefix!r} "
                               f"(registered models there: {known or 'none'})")
        return sorted(models, key=lambda m: m.name)
    if not names:
        raise CompareError(f"{uri}: an empty list of registered model names matches nothing")
    models, missing = [], []
    for name in dict.fromkeys(names):
        try:
            models.append(client.get_registered_model(name))
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            missing.append(name)
    if missing:
        raise CompareError(f"{uri}: no registered model named {', '.join(repr(n) for n in missing)} "
                           f"(registered models there: {known or 'none'})")
    return sorted(models, key=lambda m: m.name)


def _versions(client, name: str) -> list:
    quote = '"' if "'" in name else "'"
    versions = _all_pages(client.search_model_versions, filter_string=f"name = {quote}{name}{quote}")
    return sorted(versions, key=lambda v: int(v.version))


def _get_run(client, run_id: str, runs: dict, label: str):
    from mlflow.exceptions import MlflowException

    if run_id not in runs:
        try:
            runs[run_id] = client.get_run(run_id)
        except MlflowException as err:
            raise CompareError(f"{client.tracking_uri}: {label}: cannot read run {run_id}: {err.message}") from None
    return runs[run_id]


def _lineage(client, run, runs: dict, label: str) -> list:
    """``run`` and its parent runs (tag ``mlflow.parentRunId``, e.g. a Ray Tune trial's search
    run), nearest first."""
    chain = [run]
    while (parent := chain[-1].data.tags.get(_PARENT_TAG)) and parent not in {r.info.run_id for r in chain}:
        chain.append(_get_run(client, parent, runs, label))
    return chain


def _row(client, registered, version, runs: dict) -> ModelRow:
    label = f"{registered.name} version {version.version}"
    run = _get_run(client, version.run_id, runs, f"{label}'s source run") if version.run_id else None
    chain = _lineage(client, run, runs, f"{label}'s source run's parent") if run else []
    metrics = run.data.metrics if run else {}
    # the nearest run of the lineage that names the dataset / the model
    dataset = next((r.data.tags["dataset"] for r in chain if r.data.tags.get("dataset")), "")
    model_name = next((r.data.params["model.name"] for r in chain if r.data.params.get("model.name")), "")
    means: dict[Column, float] = {}
    stds: dict[Column, float] = {}
    for key, value in metrics.items():
        parsed = _parse_metric(key)
        if parsed is None:
            continue
        kind, target, set_, metric, is_std = parsed
        if target is None:
            if not dataset:
                raise CompareError(f"{client.tracking_uri}: {label}: source run {version.run_id} has the "
                                   f"metric {key!r} but neither it nor a parent run has a 'dataset' tag naming "
                                   f"the dataset it was scored on (pipeline.train and pipeline.tune set it; "
                                   f"MlflowClient.set_tag(run_id, 'dataset', <key>))")
            target = dataset
        (stds if is_std else means)[Column(kind, target, set_, metric)] = float(value)
    cells = {c: Cell(m, stds.get(c)) for c, m in means.items()}
    aliases = tuple(sorted(a for a, v in (registered.aliases or {}).items() if str(v) == str(version.version)))
    tags = version.tags or {}
    stage = version.current_stage if version.current_stage and version.current_stage != "None" else ""
    return ModelRow(name=registered.name, version=int(version.version), aliases=aliases, stage=stage,
                    dataset=dataset, model_name=model_name,
                    search=tags.get("search", ""), trial=tags.get("trial", ""), run_id=version.run_id or "",
                    cells=cells)


def collect(client, names: Optional[Sequence[str]] = None, prefix: str = DEFAULT_PREFIX,
            latest_only: bool = False) -> ComparisonTable:
    """Read the registered models' versions and their source runs into a :class:`ComparisonTable`.

    Args:
        client: an ``mlflow.MlflowClient``, or a tracking URI to open one on (its registry is the
            tracking store unless ``$MLFLOW_REGISTRY_URI`` says otherwise).
        names: registered model names to compare (all must exist); None: every registered model
            whose name starts with ``prefix``.
        prefix: the name filter when ``names`` is None.
        latest_only: only the highest version of each registered model (else all versions).

    Returns:
        One row per model version, sorted by name then version; one column per (dataset or cross
        target, set, metric) that some row has (see the module docstring for which metrics count),
        with the source run's latest value of the metric. The dataset of the in-domain metrics is
        the source run's ``dataset`` tag, or its nearest parent run's (a Ray Tune trial run's
        search run carries it).

    Raises:
        CompareError: no registered model matches (the message names the tracking URI and the
            filter), an explicitly named model does not exist, a source run (or its parent) cannot
            be read, or a source run has in-domain metrics but no ``dataset`` tag in its lineage.
    """
    client = _client(client)
    rows, runs = [], {}
    for registered in _registered_models(client, names, prefix):
        versions = _versions(client, registered.name)
        if latest_only:
            versions = versions[-1:]
        rows.extend(_row(client, registered, v, runs) for v in versions)
    columns = sorted({c for r in rows for c in r.cells}, key=Column.sort_key)
    return ComparisonTable(tracking_uri=str(client.tracking_uri), rows=tuple(rows), columns=tuple(columns))


def write_table(table: ComparisonTable, csv_path: Union[str, Path], markdown_path: Union[str, Path]) -> dict[str, Path]:
    """Write :meth:`ComparisonTable.csv_text` and :meth:`ComparisonTable.markdown`, each atomically.

    Returns:
        ``{"csv": csv_path, "markdown": markdown_path}``.
    """
    atomic_write_text(csv_path, table.csv_text())
    atomic_write_text(markdown_path, table.markdown())
    return {"csv": Path(csv_path), "markdown": Path(markdown_path)}


def print_table(table: ComparisonTable, file: Optional[IO[str]] = None) -> None:
    """Print :meth:`ComparisonTable.rich_table` to ``file`` (default stdout). On a terminal it fits
    the terminal's width as rich does; otherwise (a pipe, a log file) it is printed at its natural
    width, never wrapped or cut."""
    from rich.console import Console

    console = Console(file=file)
    rendered = table.rich_table()
    if not console.is_terminal:
        console = Console(file=file, width=Console(width=100_000).measure(rendered).maximum)
    console.print(rendered)


# ---- cross-dataset scores: written by ``pipeline.evaluate --model <MLflow URI>`` -----------------

def is_mlflow_model_uri(uri: str) -> bool:
    """Whether ``uri`` is a registry or run model URI (``models:/...`` or ``runs:/...``), i.e. a
    model with a source run to log cross-dataset scores into."""
    return uri.startswith(("models:/", "runs:/"))


def check_target_name(name: str) -> str:
    """Return ``name`` if it can name a cross-dataset target in metric names
    (``cross.<name>.<set>.<metric>``): non-empty, letters, digits, ``_``, ``-``, space or ``:``
    (MLflow's metric-name characters), no ``.`` or ``/``.

    Raises:
        CompareError: otherwise, naming the offending name.
    """
    if not _TARGET_RE.fullmatch(name or ""):
        raise CompareError(f"cross-dataset target name {name!r} must be non-empty and hold only letters, "
                           "digits, '_', '-', ' ' or ':' (no '.' or '/': it becomes one component of the "
                           f"MLflow metric names {CROSS}.<name>.<set>.<metric>)")
    return name


def model_source_run(client, model_uri: str) -> str:
    """The run id of the run that logged an MLflow model.

    ``models:/<name>/<version>``, ``models:/<name>@<alias>``, ``models:/<name>/<stage or latest>``:
    the model version's ``run_id`` (resolved with ``mlflow.store.artifact.utils.models``);
    ``models:/<model id>``: the logged model's ``source_run_id``; ``runs:/<run id>/<path>``: that
    run.

    Args:
        client: an ``mlflow.MlflowClient``, or a tracking URI.

    Raises:
        CompareError: not a ``models:/`` or ``runs:/`` URI, or a model without a source run.
        mlflow.exceptions.MlflowException: a model, version or alias that does not exist.
    """
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    client = _client(client)
    if model_uri.startswith("runs:/"):
        return RunsArtifactRepository.parse_runs_uri(model_uri)[0]
    if not model_uri.startswith("models:/"):
        raise CompareError(f"{model_uri}: not an MLflow models:/ or runs:/ URI")
    resolved = get_model_name_and_version(client, model_uri)
    if len(resolved) == 1:
        run_id = client.get_logged_model(resolved[0]).source_run_id
    else:
        run_id = client.get_model_version(*resolved).run_id
    if not run_id:
        raise CompareError(f"{client.tracking_uri}: {model_uri} was registered without a source run, so there "
                           "is no run to log its cross-dataset scores into")
    return run_id


def log_cross_metrics(client, run_id: str, target: str, metrics: Mapping[str, float]) -> dict[str, float]:
    """Log a model's scores on another dataset into its source run, as
    ``cross.<target>.<set>.<metric>`` (the run keeps its status; a re-run adds a new latest value).

    Args:
        client: an ``mlflow.MlflowClient``, or a tracking URI.
        run_id: the model's source run (:func:`model_source_run`).
        target: the evaluated dataset's name (:func:`check_target_name`).
        metrics: ``{"<set>.<metric>": value}``, e.g. ``reid.evaluation.evaluate.flat_metrics`` of a
            ``score`` result (fractions in [0, 1] and counts).

    Returns:
        The logged ``{name: value}``.

    Raises:
        CompareError: a bad target name.
        mlflow.exceptions.MlflowException: unknown run, or a name MLflow rejects.
    """
    from mlflow.entities import Metric

    client = _client(client)
    check_target_name(target)
    logged = {f"{CROSS}.{target}.{k}": float(v) for k, v in sorted(metrics.items())}
    timestamp = now_ms()
    log_batches(client, run_id, metrics=[Metric(k, v, timestamp, 0) for k, v in logged.items()])
    return logged
