"""Submission: plan the arrays, launch them through submitit, and the job callable."""
