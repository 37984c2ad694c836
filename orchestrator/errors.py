"""User errors: something asked for that cannot be done. The CLI prints `problems` one per line and exits 2,
with no traceback; every orchestrator module raises a subclass, so the CLI catches one type."""

from __future__ import annotations

from collections.abc import Sequence


class UserError(Exception):
    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))
