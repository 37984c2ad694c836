"""Submitted cells: the manifest of submissions, the scheduler (sacct/squeue), status, progress and job logs."""
