"""Results: the per-run store, aggregation over seeds, report renderers and plots."""

from fusioncli.results.store import CONFIG_FIELDS, RUN_SCHEMA, ResultsStore, flatten_record, open_store, runs_frame

__all__ = ["CONFIG_FIELDS", "RUN_SCHEMA", "ResultsStore", "flatten_record", "open_store", "runs_frame"]
