"""Replay the offline MLflow journal of a run folder into the tracking server.

When the tracking server is unreachable, ``train`` and ``evaluate`` log into
``runs/<dataset>/mlflow_journal/`` instead (they say so on stderr). Once the server is up::

    python -m pipeline.mlflow_sync runs/msmt17 [--tracking-uri http://host:5000]

creates (or continues) the run with the params, the metric histories (original steps and
timestamps), artifacts, model (registered as ``reid-<dataset>`` when ``mlflow.register_model``)
and final status, records the run id and model URI in ``runs/<dataset>/mlflow_synced.json`` (read
by ``evaluate`` and ``train --resume`` through ``reid.tracking.journal.read_run_file``), and deletes
the journal. An interrupted sync can be run again: it resumes where it stopped.
"""

import argparse
import sys
from pathlib import Path

from reid.tracking.journal import JournalError, sync_journals


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="run folder holding mlflow_journal/ (runs/<dataset>)")
    p.add_argument("--tracking-uri", default=None,
                   help="server to sync into (default: the URI each journal was meant for)")
    args = p.parse_args(argv)
    try:
        results = sync_journals(args.run_dir, args.tracking_uri)
    except JournalError as err:
        sys.exit(f"mlflow_sync: {err}")
    print(f"{args.run_dir}: {len(results)} journal(s) synced")


if __name__ == "__main__":
    main()
