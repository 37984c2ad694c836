"""Hostile grid files: each is refused as one line per problem (exit 2, no traceback), within bounded
time and memory, and nothing is submitted. The hand-written cases live in tests/grids/bad/hostile_*.yaml (also run
by test_grid and test_launch); here: what needs generating (binary, non-UTF-8, huge files, every numeric and
string field of RunSpec), the time and memory bounds, the dry-run summary, the results-root rule and the shell
rule (no grid field ever reaches a command line)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import tracemalloc
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from orchestrator import cli
from orchestrator.grid.document import MAX_CELLS_ENV
from orchestrator.grid.files import GridError, load_grids
from orchestrator.submit import launch, plan
from tests.slurm_stub import StubCell
from workloads import layout
from workloads.spec import RunSpec

REPO = Path(__file__).resolve().parents[1]
BAD = REPO / "tests" / "grids" / "bad"
HEAD = "name: hostile\nexecutor: local\n"
TRAINED = "fast-n1g1-b128-s0"


def refused(capsys: pytest.CaptureFixture[str], grid: Path, results: Path, dry_run: bool = False) -> list[str]:
    """The CLI's error lines for `grid`; asserts exit 2, no traceback, short printable lines, nothing written."""
    code = cli.main(["submit", str(grid), "--results", str(results), *(["--dry-run"] if dry_run else [])])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert lines and all(line.startswith("orchestrate: error: ") for line in lines), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert all(len(line) <= 500 and line.isprintable() for line in lines), lines
    assert not results.exists() or not any(results.iterdir()), "a refused grid must write nothing"
    return lines


# -- bounded time and memory ------------------------------------------------------------------------------------


def test_alias_bomb_is_refused_within_a_cpu_second_budget_and_200mb() -> None:
    """CPU time, not wall-clock (other work on the machine does not count): an unbounded expansion would take
    minutes and gigabytes; the bounded one takes milliseconds, so 5 CPU-seconds holds on any CPU of this kind."""
    path = BAD / "hostile_alias_bomb.yaml"
    tracemalloc.start()
    t0 = time.process_time()
    with pytest.raises(GridError) as info:
        load_grids(path)
    seconds = time.process_time() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    (problem,) = info.value.problems
    assert "alias bomb" in problem and problem.startswith(f"{path}:10: ")
    assert seconds < 5.0 and peak < 200e6, (seconds, peak)


def test_alias_bomb_through_the_cli_stays_under_200mb() -> None:
    """The whole CLI process (Python, YAML, submitit imported), its peak resident memory as the kernel counts it."""
    code = (  # VmHWM: this process image's peak (ru_maxrss would include the forking pytest process's)
        "import re, sys; from orchestrator import cli; code = cli.main(sys.argv[1:]); "
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); sys.exit(code)"
    )
    grid = str(BAD / "hostile_alias_bomb.yaml")
    out = subprocess.run([sys.executable, "-c", code, "submit", grid, "--dry-run"], capture_output=True, text=True,
                         timeout=120, cwd=REPO)  # fmt: skip
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    peak_kb = int(out.stdout.split()[-1])
    assert peak_kb < 200 * 1024, f"{peak_kb} kB"


def test_wide_alias_fanout_and_huge_lists_are_bounded(tmp_path: Path) -> None:
    """Fewer aliases but a list of 10^6 values: refused by the same node count, fast."""
    path = tmp_path / "wide.yaml"
    path.write_text(
        HEAD + "a: &a [" + ", ".join(["1"] * 1000) + "]\ngrid: {seed: [" + ", ".join(["*a"] * 1000) + "]}\n"
    )
    t0 = time.process_time()  # CPU time: other work on the machine does not count
    with pytest.raises(GridError, match="alias bomb"):
        load_grids(path)
    assert time.process_time() - t0 < 5.0


# -- files that are not (small) text ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (bytes(range(256)) * 8, "not UTF-8 text"),  # binary
        (HEAD.encode() + b"description: caf\xe9\n", "hostile.yaml:3: not UTF-8 text (byte 0xe9"),  # latin-1
        (HEAD.encode() + b"description: a\x00b\n", "special characters are not allowed"),  # NUL
        (b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(5000), "not UTF-8 text"),  # a JPEG
        (HEAD.encode() + b"description: " + b"x" * (2 << 20) + b"\n", "larger than 1 MiB"),
    ],
    ids=["binary", "latin1", "nul", "jpeg", "huge"],
)
def test_a_file_that_is_not_a_grid_is_one_line(
    tmp_path: Path, results: Path, capsys: pytest.CaptureFixture[str], content: bytes, expected: str
) -> None:
    path = tmp_path / "hostile.yaml"
    path.write_bytes(content)
    (line,) = refused(capsys, path, results)
    assert expected in line, line


# -- every value a YAML parser can produce meets its field's rule -------------------------------------------------


def _leaves(cls: type, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, type) of every setting of a RunSpec section, nested sections flattened."""
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(cls):
        tp, path = hints[f.name], f"{prefix}{f.name}"
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += _leaves(tp, f"{path}.")
        else:
            out.append((path, tp))
    return out


def _base_types(tp: Any) -> set[Any]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType, list):
        return {b for arg in typing.get_args(tp) for b in _base_types(arg)}
    return {tp}


SET_BY_THE_FILE = {"experiment", "run_id", "kind"}
FIELDS = [(p, tp) for p, tp in _leaves(RunSpec) if p not in SET_BY_THE_FILE]
NUMERIC = [(p, tp) for p, tp in FIELDS if _base_types(tp) & {int, float}]
STRINGS = [(p, tp) for p, tp in FIELDS if str in _base_types(tp)]
YAML_NUMBERS = [".nan", ".NaN", ".inf", "-.inf", "1.0e400", "-1.0e400", "1e400", "123456789012345678901234567890",
                "-0x7fffffffffffffffffff", '"12"', "[1, .nan]", "~x", "2026-01-01"]  # fmt: skip


def _grid_setting(path: str, value_yaml: str, is_list: bool) -> str:
    value = f"[{value_yaml}]" if is_list and not value_yaml.startswith("[") else value_yaml
    head, _, leaf = path.rpartition(".")
    if not head:
        return f"{HEAD}defaults:\n  {leaf}: {value}\n"
    return f"{HEAD}defaults:\n  {head}: {{{leaf}: {value}}}\n"


def test_enough_fields_are_covered() -> None:
    assert len(NUMERIC) >= 40 and len(STRINGS) >= 10, (len(NUMERIC), len(STRINGS))


@pytest.mark.parametrize(("path", "tp"), NUMERIC, ids=[p for p, _ in NUMERIC])
@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_special_and_absurd_numbers_are_refused_in_every_numeric_field(tmp_path: Path, path: str, tp: Any) -> None:
    grid = tmp_path / "n.yaml"
    is_list = typing.get_origin(tp) is list
    for value in YAML_NUMBERS:
        grid.write_text(_grid_setting(path, value, is_list))
        with pytest.raises(GridError) as info:
            load_grids(grid)
        problems = info.value.problems
        assert any(f": defaults.{path}" in p for p in problems), (value, problems)
        assert all("\n" not in p and len(p) <= 400 for p in problems), problems


@pytest.mark.parametrize(("path", "tp"), STRINGS, ids=[p for p, _ in STRINGS])
def test_long_and_control_strings_are_refused_in_every_string_field(tmp_path: Path, path: str, tp: Any) -> None:
    grid = tmp_path / "s.yaml"
    is_list = typing.get_origin(tp) is list
    for value in ['"a\\e[2Jb"', '"x\\ry"', '"\\x00"', '"\\u202e"', "x" * 5000]:
        grid.write_text(_grid_setting(path, value, is_list))
        with pytest.raises(GridError) as info:
            load_grids(grid)
        problems = info.value.problems
        assert any(f": defaults.{path}" in p for p in problems), (value, problems)
        assert all(len(p) <= 400 and p.isprintable() for p in problems), problems


def test_control_characters_in_keys_are_escaped(tmp_path: Path, results: Path, capsys: pytest.CaptureFixture[str]):
    grid = tmp_path / "keys.yaml"
    grid.write_text(HEAD + 'defaults:\n  "\\e]0;owned\\a": 1\n  "' + "k" * 1000 + '": 2\n')
    lines = refused(capsys, grid, results)
    assert len(lines) == 2 and "\\x1b]0;owned\\x07" in lines[0], lines


# -- names and paths ----------------------------------------------------------------------------------------------


def test_traversal_never_becomes_a_run_id(tmp_path: Path) -> None:
    grid = tmp_path / "t.yaml"
    grid.write_text("name: evals\nkind: evaluate\nexecutor: local\ngrid:\n  evaluate.source_run: ['../x', '..']\n")
    with pytest.raises(GridError) as info:
        load_grids(grid)
    assert len(info.value.problems) == 2 and "eval-.." not in str(info.value)


def test_a_symlink_out_of_the_results_root_is_refused(tmp_path: Path, results: Path) -> None:
    outside = tmp_path / "outside" / TRAINED
    outside.mkdir(parents=True)
    runs = layout.runs_dir(results, "trained")
    runs.mkdir(parents=True)
    (runs / TRAINED).symlink_to(outside)
    grid = tmp_path / "e.yaml"
    grid.write_text(
        f"name: evals\nkind: evaluate\nexecutor: local\ndefaults:\n  evaluate: {{source_experiment: trained}}\n"
        f"grid:\n  evaluate.source_run: [{TRAINED}]\n"
    )
    with pytest.raises(plan.LaunchError, match="outside the results root"):
        launch.dry_run(grid, results)
    # the cell's own run directory too
    own = layout.runs_dir(results, "mine")
    own.mkdir(parents=True)
    (own / "standard-n1g1-b128-s0").symlink_to(outside)
    mine = tmp_path / "m.yaml"
    mine.write_text("name: mine\nexecutor: local\n")
    with pytest.raises(plan.LaunchError, match="run directory"):
        launch.dry_run(mine, results)


# -- many cells ---------------------------------------------------------------------------------------------------


def _cells_grid(path: Path, seeds: int, lrs: int) -> Path:
    lr_values = ", ".join(f"{0.001 * (i + 1):g}" for i in range(lrs))
    path.write_text(
        "name: big\nexecutor: slurm\nprofile: local-cluster\n"
        f"grid:\n  seed: [{', '.join(map(str, range(seeds)))}]\n  optimizer.lr: [{lr_values}]\n"
    )
    return path


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_ten_thousand_cells_dry_run_is_a_summary(tmp_path: Path, results: Path) -> None:
    t0 = time.process_time()  # CPU time: bounded work (a quadratic plan of 10 000 cells would take minutes)
    text = launch.dry_run(_cells_grid(tmp_path / "big.yaml", 100, 100), results)
    assert time.process_time() - t0 < 60
    lines = text.splitlines()
    assert max(len(line) for line in lines) < 2000, max(len(line) for line in lines)
    assert "10000 cell(s): " in text and "and 9990 more" in text
    assert "#SBATCH --array=0-" in text  # one array, or several where the site caps MaxArraySize


def test_too_many_cells_say_how_to_raise_the_limit(
    tmp_path: Path, results: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (line,) = refused(capsys, _cells_grid(tmp_path / "big.yaml", 101, 100), results)
    assert "expected at most 10000 cells; the lists give 10100" in line and f"{MAX_CELLS_ENV}=10100" in line
    small = _cells_grid(tmp_path / "small.yaml", 3, 2)
    monkeypatch.setenv(MAX_CELLS_ENV, "5")
    assert "at most 5 cells; the lists give 6" in refused(capsys, small, results)[0]
    monkeypatch.setenv(MAX_CELLS_ENV, "6")
    assert len(load_grids(small)[0].cells) == 6


# -- no grid field reaches a shell --------------------------------------------------------------------------------

SHELL_GRID = """\
name: shell
kind: {kind}
profile: local-cluster
executor: {executor}
description: "$(touch {marker}) `touch {marker}`; touch {marker}"
defaults:
  data_root: "$(touch {marker})"
  resources: {{timeout_min: 2}}
{extra}"""


def _shell_grid(tmp_path: Path, executor: str, kind: str = "train", extra: str = "") -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    grid = tmp_path / f"shell-{executor}-{kind}.yaml"
    grid.write_text(SHELL_GRID.format(marker=marker, executor=executor, kind=kind, extra=extra))
    return grid, marker


def test_no_grid_field_is_in_the_sbatch_script(tmp_path: Path, results: Path) -> None:
    evaluate = f'  evaluate: {{source_run: {TRAINED}, checkpoint: "$(touch {tmp_path / "pwned"}).pt"}}\n'
    for kind, extra in (("train", ""), ("evaluate", evaluate)):
        grid, marker = _shell_grid(tmp_path, "slurm", kind, extra)
        script = launch.dry_run(grid, results)
        assert "#SBATCH" in script and "touch" not in script and "$(" not in script, script
        assert not marker.exists()


def test_no_grid_field_is_run_by_a_local_job(tmp_path: Path, results: Path) -> None:
    grid, marker = _shell_grid(tmp_path, "local")
    result = launch.submit(grid, results, log=lambda _: None, job=StubCell())
    assert result.local is not None and result.local.wait(poll_s=0.2)
    spec = layout.read_json(layout.run_dir(results, "shell", "standard-n1g1-b128-s0") / layout.SPEC)
    assert spec["data_root"] == f"$(touch {marker})"  # kept verbatim as data, never run
    assert not marker.exists()


@pytest.mark.slurm
def test_no_grid_field_is_run_by_a_slurm_job(tmp_path: Path, results: Path) -> None:
    from orchestrator.monitor import status

    grid, marker = _shell_grid(tmp_path, "slurm")
    launch.submit(grid, results, log=lambda _: None, job=StubCell())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        (cell,) = status.poll(results / "shell")
        if cell.state in status.TERMINAL:
            break
        time.sleep(1)
    assert cell.state == "finished", cell
    assert not marker.exists()
