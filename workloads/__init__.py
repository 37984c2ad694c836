"""fastrobust workloads: attacks, models, data, DDP training, evaluation, benchmarks, features."""
