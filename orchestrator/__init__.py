"""fastrobust orchestrator: grid files -> Slurm jobs (submitit) -> CSVs -> tables and figures."""
