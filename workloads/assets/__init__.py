"""What a run loads: datasets, models, checkpoints and the formats of outside tools (external/)."""
