"""How a job's processes run: the rank supervisor, ranks, preemption, the run lock, env.json, the allocator and the
process group."""
