"""Experiment trackers: MLflow (``--mlflow``) and Weights & Biases (``--wandb``).

The results store stays the source of truth; trackers mirror it. One tracker run per fusioncli
run, whatever trains it (loop, stacked group, Ray): :class:`~fusioncli.tracking.run.RunTracking`
opens, feeds and closes it, each call in a worker thread with a time limit, and turns every
failure into a problem line kept to that run. :func:`make_trackers` builds the trackers a
command asks for, :func:`probe_trackers` checks them before training,
:func:`~fusioncli.tracking.publish.publish_records` logs stored runs after the fact.

A tracker is anything with ``name``, ``destination``, ``timeout``, ``on_problem``,
``probe(create=...)`` and ``open(RunInfo) -> TrackerRun`` (see :mod:`fusioncli.tracking.base`);
the tracker libraries are imported only when a tracker is asked for.
"""

from fusioncli.tracking.base import (
    DEFAULT_TIMEOUT_S,
    EXIT_TRACKER_MISSED,
    Artifact,
    RunInfo,
    Tracker,
    TrackerRun,
    TrackerTimeout,
    call_with_timeout,
    group_name,
    run_name,
)
from fusioncli.tracking.factory import default_mlflow_uri, make_trackers, probe_trackers
from fusioncli.tracking.ledger import Ledger
from fusioncli.tracking.run import RunTracking

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "EXIT_TRACKER_MISSED",
    "Artifact",
    "Ledger",
    "RunInfo",
    "RunTracking",
    "Tracker",
    "TrackerRun",
    "TrackerTimeout",
    "call_with_timeout",
    "default_mlflow_uri",
    "group_name",
    "make_trackers",
    "probe_trackers",
    "run_name",
]
