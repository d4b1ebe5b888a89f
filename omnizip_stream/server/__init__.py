"""The stream server: one loaded model serving many live streams (issue 14)."""

from __future__ import annotations

from omnizip_stream.server.scheduler import PendingWindow, Scheduler
from omnizip_stream.server.worker import ModelWorker

__all__ = ["ModelWorker", "PendingWindow", "Scheduler"]
