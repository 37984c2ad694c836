"""Formats and tools from outside fastrobust: robustness-library checkpoints (madry), AutoAttack (autoattack)."""
