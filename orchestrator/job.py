"""Old import path of the job callable: jobs queued before the rooms moved are pickled naming this module."""

from orchestrator.submit.job import CellJob

__all__ = ["CellJob"]
