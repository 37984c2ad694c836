"""Time to target on synthetic epochs.csv rows with known answers: reached mid-run, never reached,
reached at the first evaluation, ties, the default rule, unit choice, GPU-hours = wall x world size, the
AutoAttack columns and the masking flag, the report files and the CLI's --target-adv-acc."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from orchestrator import cli
from orchestrator.report import build_report
from orchestrator.report import time_to_target as ttt
from orchestrator.report.tables import ReportError, Tables, load_tables


def run_row(run_id: str, method: str = "fast", world_size: int = 1, **kw: object) -> dict[str, object]:
    return {"run_id": run_id, "experiment": "exp", "kind": "train", "dataset": "fashion_mnist", "model": "small_cnn",
            "method": method, "attack_eps": 1.0, "world_size": world_size, "eval_every": 2, "state": "finished",
            "elapsed_s_last": 100.0, "elapsed_s_best": 80.0, **kw}  # fmt: skip


def epochs(run_id: str, evals: dict[int, float], every_s: float = 10.0, last: int = 6) -> list[dict[str, object]]:
    """Epochs 1..last, each every_s seconds; adv_acc only on the epochs in `evals`."""
    return [
        {"run_id": run_id, "epoch": e, "elapsed_s": e * every_s, "adv_acc": evals.get(e)} for e in range(1, last + 1)
    ]


def experiment(tmp_path: Path, runs: list[dict[str, object]], rows: list[dict[str, object]],
               robustness: list[dict[str, object]] | None = None) -> Path:  # fmt: skip
    exp = tmp_path / "exp"
    exp.mkdir(exist_ok=True)
    pd.DataFrame(runs).to_csv(exp / "runs.csv", index=False)
    pd.DataFrame(rows).to_csv(exp / "epochs.csv", index=False)
    if robustness is not None:
        pd.DataFrame(robustness).to_csv(exp / "robustness.csv", index=False)
    return exp


def reaches(exp: Path, target: float | None = None) -> dict[str, ttt.Reach]:
    return {r.run_id: r for r in ttt.time_to_target(load_tables(exp), target)}


def test_mid_run_never_first_evaluation_and_gpu_hours(tmp_path: Path) -> None:
    rows = (
        epochs("mid", {2: 0.30, 4: 0.55, 6: 0.60})
        + epochs("never", {2: 0.20, 4: 0.40, 6: 0.45})
        + epochs("first", {2: 0.52, 4: 0.58, 6: 0.59}, every_s=30.0)
    )
    exp = experiment(tmp_path, [run_row("mid"), run_row("never", "pgd7"), run_row("first", world_size=4)], rows)
    got = reaches(exp, target=0.5)
    assert (got["mid"].epoch, got["mid"].elapsed_s, got["mid"].acc_at_target) == (4, 40.0, 0.55)
    assert got["mid"].gpu_s == 40.0 and got["mid"].evaluations == 3
    assert not got["never"].reached and got["never"].elapsed_s is None and got["never"].gpu_s is None
    assert (got["never"].best_acc, got["never"].best_epoch) == (0.45, 6)
    assert (got["first"].epoch, got["first"].elapsed_s) == (2, 60.0)
    assert got["first"].gpu_s == 240.0  # wall x world size
    rows_out = {r["run_id"]: r for r in ttt.ttt_rows(list(got.values()))}
    assert (
        rows_out["first"]["wall_hours"] == f"{60 / 3600:.6g}" and rows_out["first"]["gpu_hours"] == f"{240 / 3600:.6g}"
    )
    assert rows_out["never"]["reached"] == "no" and rows_out["never"]["wall_hours"] == ""  # no invented number
    text = ttt.ttt_markdown(list(got.values()))
    assert "not reached" in text and "never (best 45.0 % at epoch 6, 3 evaluations)" in text
    assert "first to the target is mid (1-Step PGD, 1 GPU) in 0.7 minutes (others, times as long: first 1.5×)" in text


def test_ties_reach_at_equality_and_earliest_epoch_wins(tmp_path: Path) -> None:
    rows = epochs("tie", {2: 0.50, 4: 0.50, 6: 0.49}) + epochs("dup", {2: 0.40, 4: 0.45})
    rows.append({"run_id": "dup", "epoch": 4, "elapsed_s": 47.0, "adv_acc": 0.5})  # requeued epoch 4: last row
    # 1000 validation images: 0.49 after the hit is within one SE (1.6 points) of the target, so the hit stands
    exp = experiment(tmp_path, [run_row("tie", val_subset=1000), run_row("dup", "pgd7")], rows)
    got = reaches(exp, target=0.5)
    assert (got["tie"].epoch, got["tie"].elapsed_s) == (2, 20.0)  # == target counts; the first of equal values
    assert got["tie"].best_epoch == 2
    assert (got["dup"].epoch, got["dup"].elapsed_s, got["dup"].evaluations) == (4, 47.0, 2)
    # two runs reaching at the same time: table order (dataset, most attack steps first, GPUs, run_id), stable
    same = epochs("b", {2: 0.6}) + epochs("a", {2: 0.6})
    (tmp_path / "x").mkdir()
    exp2 = experiment(tmp_path / "x", [run_row("b"), run_row("a")], same)
    assert [r.run_id for r in ttt.time_to_target(load_tables(exp2), 0.5)] == ["a", "b"]


def test_default_target_is_95_percent_of_the_datasets_best(tmp_path: Path) -> None:
    rows = epochs("a", {2: 0.50, 4: 0.80}) + epochs("b", {2: 0.77, 4: 0.78})
    got = reaches(experiment(tmp_path, [run_row("a"), run_row("b")], rows))
    assert got["a"].target == pytest.approx(0.76) and "95%" in got["a"].rule and "80.0 %" in got["a"].rule
    assert (got["a"].epoch, got["b"].epoch) == (4, 2)


@pytest.mark.parametrize(("step_s", "unit"), [(1.0, "seconds"), (120.0, "minutes"), (3000.0, "hours")])
def test_unit_follows_the_largest_time(tmp_path: Path, step_s: float, unit: str) -> None:
    exp = experiment(tmp_path, [run_row("a", world_size=2)], epochs("a", {2: 0.6}, every_s=step_s))
    head, rows, _ = ttt.ttt_table(list(reaches(exp, 0.5).values()))
    assert f"Wall-clock ({unit})" in head and f"GPU-{unit}" in head
    if unit == "hours":  # 2 epochs x 3000 s = 1.67 h; GPU-hours 3.33
        assert rows[0][5:7] == ["1.7", "3.3"]


def test_autoattack_columns_and_masking_flag(tmp_path: Path) -> None:
    rows = epochs("ok", {2: 0.6}) + epochs("masked", {2: 0.7}) + epochs("plain", {2: 0.6})
    rob = [
        {"run_id": "ok", "method": "fast", "eps": 1.0, "adv_acc": 0.62, "aa_acc": 0.61, "checkpoint": "best"},
        {"run_id": "ok", "method": "fast", "eps": 1.0, "adv_acc": 0.60, "aa_acc": 0.59, "checkpoint": "last",
         "aa_version": "standard"},
        {"run_id": "ok", "method": "fast", "eps": 0.5, "adv_acc": 0.7, "aa_acc": 0.1, "checkpoint": "last"},
        {"run_id": "masked", "method": "fast", "eps": 1.0, "adv_acc": 0.70, "aa_acc": 0.40, "checkpoint": "last"},
        {"run_id": "plain", "method": "fast", "eps": 1.0, "adv_acc": 0.60, "aa_acc": None, "checkpoint": "last"},
    ]  # fmt: skip
    exp = experiment(tmp_path, [run_row("ok"), run_row("masked"), run_row("plain")], rows, rob)
    got = reaches(exp, 0.5)
    assert (got["ok"].aa_acc, got["ok"].aa_pgd_acc, got["ok"].aa_version) == (0.59, 0.60, "standard")
    assert got["ok"].gap_points == pytest.approx(1.0) and not got["ok"].masked
    assert got["masked"].masked and got["masked"].gap_points == pytest.approx(30.0)
    assert got["plain"].aa_acc is None and not got["plain"].masked
    text = ttt.ttt_markdown(list(got.values()))
    assert "+30.0 ‡" in text and "gradient masking" in text
    assert "$^\\ddagger$" in ttt.ttt_latex(list(got.values()))


def test_report_writes_the_table_figure_and_section(tmp_path: Path) -> None:
    rows = epochs("a", {2: 0.4, 4: 0.6}) + epochs("s", {2: 0.1, 4: 0.1})
    exp = experiment(tmp_path, [run_row("a"), run_row("s", "standard")], rows)
    md = build_report(exp, target_adv_acc="50%").read_text()
    out = exp / "report"
    for name in ("time_to_target.csv", "time_to_target.md", "time_to_target.tex", "time_to_target.png"):
        assert (out / name).stat().st_size > 0
    csv = pd.read_csv(out / "time_to_target.csv")
    assert list(csv.columns) == list(ttt.TTT_COLUMNS)
    assert csv.set_index("run_id")["reached"].to_dict() == {"a": "yes", "s": "no"}
    assert "## Time to target robust accuracy" in md and "given (--target-adv-acc)" in md


def test_cli_target_flag_and_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exp = experiment(tmp_path, [run_row("a")], epochs("a", {2: 0.4, 4: 0.6}))
    assert cli.main(["report", str(exp), "--target-adv-acc", "0.55"]) == 0
    assert pd.read_csv(exp / "report" / "time_to_target.csv")["target_adv_acc"].tolist() == [0.55]
    assert ttt.parse_target("60%") == pytest.approx(0.6) and ttt.parse_target(None) is None
    for bad in ("70", "0", "x", "-1%"):
        with pytest.raises(ReportError, match="--target-adv-acc"):
            ttt.parse_target(bad)
    assert cli.main(["report", str(exp), "--target-adv-acc", "70"]) != 0
    assert "--target-adv-acc" in capsys.readouterr().err


def test_no_evaluations_no_rows() -> None:
    runs = pd.DataFrame([run_row("a")])
    assert ttt.time_to_target(Tables(Path("/nonexistent"), runs, None, None)) == []


def test_fig2_draws_autoattack_beside_pgd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fig. 2: with aa_acc in robustness.csv each such run gets a dashed AutoAttack line beside its PGD line."""
    from orchestrator.report import plots

    drawn: list[object] = []
    monkeypatch.setattr(plots, "save", lambda fig, out_dir, stem: drawn.append(fig) or [out_dir / f"{stem}.png"])
    rob = pd.DataFrame(
        [{"run_id": r, "method": m, "dataset": "fashion_mnist", "eps": e, "steps": 20, "restarts": 10,
          "adv_acc": a, "aa_acc": None if r == "s" else a - 0.02}
         for r, m in (("f", "fast"), ("s", "standard")) for e, a in ((0.0, 0.8), (1.0, 0.6))]
    )  # fmt: skip
    plots.fig2(rob, tmp_path, {"fashion_mnist": 1.0})
    (ax,) = drawn[0].axes  # type: ignore[attr-defined]
    styles = sorted(line.get_linestyle() for line in ax.get_lines() if len(line.get_xdata()) == 2)
    assert styles == ["-", "-", "--", ":"]  # PGD for both runs, AutoAttack for the one that has it, training eps
    assert "AutoAttack" in [t.get_text() for t in ax.get_legend().get_texts()]
    plots.fig2(rob.drop(columns=["aa_acc"]), tmp_path, {})
    (ax2,) = drawn[1].axes  # type: ignore[attr-defined]
    assert "AutoAttack" not in [t.get_text() for t in ax2.get_legend().get_texts()]


# -- the grid's report.target_adv_acc (orchestrator.grid.report_settings) ----------------------------------------------


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_grid_target_is_used_unless_the_flag_overrides_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.grid import report_settings as grid_report

    exp = experiment(tmp_path, [run_row("a")], epochs("a", {2: 0.4, 4: 0.6, 6: 0.8}))
    assert reaches(exp)["a"].target == pytest.approx(0.76)  # nothing recorded: 95 % of the best
    grid_report.save(exp, grid_report.ReportSettings(target_adv_acc=0.55))
    got = reaches(exp)["a"]
    assert (got.target, got.epoch, got.rule) == (0.55, 4, "given (report.target_adv_acc of the grid file)")
    assert cli.main(["report", str(exp)]) == 0
    csv = pd.read_csv(exp / "report" / "time_to_target.csv")
    assert (csv["target_adv_acc"].tolist(), csv["epoch"].tolist()) == ([0.55], [4])
    assert cli.main(["report", str(exp), "--target-adv-acc", "0.35"]) == 0  # the flag wins
    csv = pd.read_csv(exp / "report" / "time_to_target.csv")
    assert (csv["target_adv_acc"].tolist(), csv["target_rule"].tolist()) == ([0.35], ["given (--target-adv-acc)"])
    grid_report.save(exp, None)  # a grid without the section: the stated rule again
    assert reaches(exp)["a"].target == pytest.approx(0.76)
    (exp / grid_report.REPORT_SETTINGS).write_text('{"target_adv_acc": 60}\n')  # edited by hand
    capsys.readouterr()
    assert cli.main(["report", str(exp)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "report-settings.json: report.target_adv_acc: expected a fraction in (0, 1]" in line and "got 60" in line


def test_submit_records_the_grid_report_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.grid import report_settings as grid_report
    from orchestrator.grid.files import load_grids
    from orchestrator.submit import launch, local_queue
    from orchestrator.submit.plan import Plan

    grid = tmp_path / "g.yaml"
    text = ("name: rep\nkind: train\nexecutor: local\ndefaults: {dataset: fashion_mnist, model: small_cnn, "
            "epochs: 1, global_batch_size: 8}\ngrid:\n  method: [standard]\n")  # fmt: skip
    grid.write_text(text + "report: {target_adv_acc: 0.6555}\n")

    def fake_submit(path: str, root: Path, *args: object, **kwargs: object) -> launch.SubmitResult:
        return launch.SubmitResult(plans=[Plan(g, root / g.name) for g in load_grids(path)])

    monkeypatch.setattr(launch, "submit", fake_submit)
    monkeypatch.setattr(local_queue, "queue_submission", lambda *args: None)  # submit in this process (the fake)
    results = tmp_path / "results"
    assert cli.main(["submit", str(grid), "--results", str(results)]) == 0
    assert grid_report.load(results / "rep") == grid_report.ReportSettings(target_adv_acc=0.6555)
    grid.write_text(text)  # resubmitted without the section: nothing stale is left
    assert cli.main(["submit", str(grid), "--results", str(results)]) == 0
    assert not (results / "rep" / grid_report.REPORT_SETTINGS).exists()


def test_a_model_at_chance_never_wins_nor_sets_the_target(tmp_path: Path) -> None:
    """Too high a learning rate: runs at chance (10 classes: 10 %) must not be crowned, whatever the target."""
    at_chance = [{**r, "clean_acc": 0.1 if r["adv_acc"] is not None else None}
                 for r in epochs("lr-too-high", {2: 0.10, 4: 0.10, 6: 0.10}, every_s=1.0)]  # fmt: skip
    clean_chance = [{**r, "clean_acc": 0.105 if r["adv_acc"] is not None else None}  # robust 30 %, clean at chance
                    for r in epochs("clean-chance", {2: 0.30, 4: 0.30, 6: 0.30}, every_s=1.0)]  # fmt: skip
    learned = [{**r, "clean_acc": 0.7 if r["adv_acc"] is not None else None}
               for r in epochs("learned", {2: 0.40, 4: 0.60, 6: 0.62})]  # fmt: skip
    runs = [run_row("lr-too-high"), run_row("clean-chance"), run_row("learned")]
    exp = experiment(tmp_path, runs, at_chance + clean_chance + learned)
    got = reaches(exp)  # default target: 95 % of the best run that learned something (62 %), not of anything else
    assert got["learned"].target == pytest.approx(0.95 * 0.62)
    assert got["lr-too-high"].at_chance and got["clean-chance"].at_chance and not got["learned"].at_chance
    got = reaches(exp, target=0.1)  # a target the chance runs "reach" at their first evaluation
    assert not got["lr-too-high"].reached and not got["clean-chance"].reached
    assert got["learned"].reached
    md = ttt.ttt_markdown(list(got.values()))
    assert "first to the target is learned" in md and "not reached (at chance)" in md
    assert "At chance (learned nothing" in md
    assert {r["run_id"]: r["chance_flag"] for r in ttt.ttt_rows(list(got.values()))} == {
        "lr-too-high": "yes", "clean-chance": "yes", "learned": ""}  # fmt: skip
    # all at chance: no target, so no table and nobody first
    (tmp_path / "alone").mkdir()
    alone = experiment(tmp_path / "alone", [run_row("lr-too-high")], at_chance)
    assert reaches(alone) == {}
