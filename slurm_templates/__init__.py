"""The site profiles that ship with fastrobust (package data: orchestrator.grid.profiles finds them here)."""
