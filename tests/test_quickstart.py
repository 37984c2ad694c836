"""The README's quick start runs as written: the block between `<!-- quickstart:begin -->` and
`<!-- quickstart:end -->` (docs/quickstart.md opens with the same block) is extracted, each ```bash block is run in
order by bash in a fresh folder (experiments/ linked in, results there and in $FASTROBUST_RESULTS), and each
```text block under it is the output it gives: every line shown appears, in order, once numbers are masked (job
ids and seconds differ per run; `...` stands for lines that depend on timing, such as epoch progress).
`pip install` lines are not run (the test runs inside the installed environment): the package they install must
import and `orchestrate` must be on PATH."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- quickstart:begin -->", "<!-- quickstart:end -->"
SHOWN_CHECKOUT = "/home/you/fastrobust"  # where the README pretends the checkout is
FENCE = re.compile(r"^```(\w+)\n(.*?)^```\n", re.M | re.S)


def block(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"{path}: one quick-start block"
    return text[text.index(BEGIN) : text.index(END) + len(END)]


def steps(text: str) -> list[tuple[str, str | None]]:
    """(bash commands, the text output shown right after them, or None)."""
    fences = [(m.group(1), m.group(2), m.start(), m.end()) for m in FENCE.finditer(text)]
    out: list[tuple[str, str | None]] = []
    for i, (lang, body, _, end) in enumerate(fences):
        if lang != "bash":
            continue
        nxt = fences[i + 1] if i + 1 < len(fences) else None
        shown = nxt[1] if nxt is not None and nxt[0] == "text" and not text[end : nxt[2]].strip() else None
        out.append((body, shown))
    return out


def masked(line: str) -> str:
    return " ".join(re.sub(r"\d+(\.\d+)?", "#", line).split())


def assert_shown(shown: str, actual: str, command: str) -> None:
    lines, at = [masked(line) for line in actual.splitlines()], 0
    for want in shown.splitlines():
        if want.strip() == "...":
            continue
        key = masked(want)
        assert key in lines[at:], f"`{command.strip()}` did not print {want!r} (after line {at}):\n{actual}"
        at = lines.index(key, at) + 1


def test_readme_and_docs_hold_the_same_block() -> None:
    assert block(REPO / "README.md") == block(REPO / "docs" / "quickstart.md")


@pytest.mark.slow  # ~40 s: two cells, a report
def test_quick_start_runs_as_written(tmp_path: Path) -> None:
    work = tmp_path / "checkout"
    work.mkdir()
    (work / "experiments").symlink_to(REPO / "experiments")
    env = {**os.environ, "FASTROBUST_RESULTS": str(work / "results"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    assert shutil.which("orchestrate", path=env["PATH"]), "the console script of `pip install -e .`"
    ran = 0
    for commands, shown in steps(block(REPO / "README.md")):
        script = "\n".join(line for line in commands.splitlines() if not line.startswith("pip install"))
        if not script.strip():
            import orchestrator  # noqa: F401  # what `pip install -e .` installed
            import workloads  # noqa: F401

            continue
        out = subprocess.run(["bash", "-e", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
        actual = (out.stdout + out.stderr).replace(str(work), SHOWN_CHECKOUT)
        assert out.returncode == 0, f"`{script}` exited {out.returncode}:\n{actual}"
        if shown is not None:
            assert_shown(shown, actual, script)
        ran += 1
    assert ran >= 4, "submit, status, report and ls"
    report = (work / "results" / "quickstart" / "report" / "report.md").read_text(encoding="utf-8")
    assert "no ratios: no baseline run finished (the default baseline is No PGD" in report  # one method: no baseline


@pytest.mark.parametrize(
    ("actual", "ok"),
    [("a 12 b\nc\n", True), ("c\na 3 b\n", False), ("a 7.5 b\nx\nc\n", True)],
)
def test_shown_lines_must_appear_in_order(actual: str, ok: bool) -> None:
    if ok:
        assert_shown("a 1 b\n...\nc\n", actual, "cmd")
    else:
        with pytest.raises(AssertionError):
            assert_shown("a 1 b\n...\nc\n", actual, "cmd")
