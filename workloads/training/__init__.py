"""Training: the train step (engine), free steps, resume points, recipes, LR schedules, the catastrophic-overfitting
guard, clean and robust accuracy, and the curves."""
