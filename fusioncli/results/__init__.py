"""Results: the per-run store, aggregation over seeds, report renderers and plots.

The run record and its flat row (``RUN_SCHEMA``) live in :mod:`fusioncli.record`.
"""

from fusioncli.config import CONFIG_FIELDS
from fusioncli.record import RUN_SCHEMA
from fusioncli.results.store import ResultsStore, open_store, runs_frame

__all__ = ["CONFIG_FIELDS", "RUN_SCHEMA", "ResultsStore", "open_store", "runs_frame"]
