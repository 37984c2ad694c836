"""Adversarial examples: the attacks and the representations they reveal."""
