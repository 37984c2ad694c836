"""Predicted wall-clock of grid cells from `kind: bench` measurements (`orchestrate estimate`, report Fig. 1).

bench_costs   bench.csv -> per-batch costs t(B) of one device, model and dataset (interpolation, world sizes)
model         the paper's cost model on top: whole-run time per cell, grid estimates, estimate vs measured
Both read CSVs only (pandas); neither imports torch.
"""
