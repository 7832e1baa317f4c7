"""A durable cancel request: a file every worker of the job can see.

The driver (``pytc run``, the service) sets it; block tasks check it between batches and the
training task before every iteration, so a cancel reaches work already running on any worker.
"""

from __future__ import annotations

from pathlib import Path


class CancelFlag:
    """Mixed into a job's run folder; ``cancel_flag`` says where the file lives."""

    @property
    def cancel_flag(self) -> Path:
        raise NotImplementedError

    def request_cancel(self) -> None:
        self.cancel_flag.parent.mkdir(parents=True, exist_ok=True)
        self.cancel_flag.touch()

    def clear_cancel(self) -> None:
        self.cancel_flag.unlink(missing_ok=True)

    def is_cancelled(self) -> bool:
        return self.cancel_flag.exists()
