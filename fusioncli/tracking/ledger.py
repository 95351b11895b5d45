"""Which tracker runs hold which fusioncli run: ``<results>/tracking/<run_id>.json``.

One small file per fusioncli run, written atomically once its tracker runs are closed:
``{destination: {"tracker", "id", "complete", "logged_at"}}``. It lets ``--force`` tag the new
tracker run with the one it replaces, and lets ``sweep --log-existing`` / ``report --to-mlflow``
publish only the stored runs a destination does not hold yet. Losing it loses only those links.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fusioncli.atomic import atomic_write_json

FOLDER = "tracking"


class Ledger:
    """The tracker runs logged for the runs of one results store."""

    def __init__(self, results_dir: Path) -> None:
        self.folder = Path(results_dir) / FOLDER

    def path(self, run_id: str) -> Path:
        return self.folder / f"{run_id}.json"

    def read(self, run_id: str) -> dict[str, Any]:
        """Every destination's entry for ``run_id`` ({} when none, or unreadable)."""
        try:
            values = json.loads(self.path(run_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return values if isinstance(values, dict) else {}

    def entry(self, run_id: str, destination: str) -> dict[str, Any] | None:
        found = self.read(run_id).get(destination)
        return found if isinstance(found, dict) else None

    def has_complete(self, run_id: str, destination: str) -> bool:
        """Whether ``destination`` holds ``run_id`` whole (logged without a problem)."""
        entry = self.entry(run_id, destination)
        return bool(entry and entry.get("complete"))

    def note(self, run_id: str, destination: str, tracker: str, tracker_run_id: str, *, complete: bool) -> None:
        """Record that ``tracker_run_id`` at ``destination`` holds ``run_id`` (replacing an older one)."""
        values = self.read(run_id)
        values[destination] = {
            "tracker": tracker,
            "id": tracker_run_id,
            "complete": complete,
            "logged_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path(run_id), values)
