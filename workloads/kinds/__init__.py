"""The four job kinds: each module's main(spec, run_dir, dist) -> dict runs one kind (workloads.entry dispatches)."""
