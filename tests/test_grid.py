"""Grid files and site profiles: expansion, validation messages, the paper's grids, submitit parameters."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import submitit

from orchestrator.grid.files import GridError, load_grid, load_grids, resolve_executor
from orchestrator.grid.profiles import ProfileError, available_profiles, executor_kwargs, load_profile, slurm_parameters
from workloads.spec import RunSpec, resolve_attack, resolve_eval_attack

ROOT = Path(__file__).resolve().parents[1]
GRIDS = Path(__file__).resolve().parent / "grids"
BAD = sorted((GRIDS / "bad").glob("*.yaml"))


def expectation(path: Path) -> tuple[str, str]:
    """First line of a bad grid: `# expect: KEY.PATH` or `# expect-line: N` (problems without a key path)."""
    match = re.match(r"# (expect|expect-line): (\S+)$", path.read_text().splitlines()[0])
    assert match, f"{path.name}: first line must be '# expect: KEY.PATH' or '# expect-line: N'"
    return match.group(1), match.group(2)


# -- expansion -----------------------------------------------------------------------------------------


def test_expansion_resolves_every_cell():
    grid = load_grid(GRIDS / "good" / "expansion.yaml")
    assert (grid.name, grid.kind, grid.executor, grid.profile.name) == ("expansion", "train", "slurm", "local-cluster")
    assert len(grid.cells) == 12
    ids = [c.run_id for c in grid.cells]
    assert len(set(ids)) == 12
    assert ids[:4] == ["standard-n1g2-b64-s0", "standard-n1g2-b64-s1", "standard-n2g2-b64-s0", "standard-n2g2-b64-s1"]
    assert "pgd7-n2g2-b64-s1" in ids
    for cell in grid.cells:
        assert isinstance(cell, RunSpec)
        assert (cell.experiment, cell.kind, cell.dataset, cell.epochs) == ("expansion", "train", "fashion_mnist", 3)
        # defaults' sections are merged, not replaced: unset keys keep RunSpec's defaults
        assert (cell.optimizer.lr, cell.optimizer.weight_decay, cell.optimizer.momentum) == (0.05, 1e-4, 0.9)
        assert cell.shape.gpus_per_node == 2 and cell.shape.nodes in (1, 2)
        assert cell.resources.cpus_per_task == 2
        assert cell.resources.timeout_min == 10  # the profile's default time limit
        assert cell.run_id == f"{cell.method}-n{cell.shape.nodes}g2-b64-s{cell.seed}"
    by_method = {c.method: resolve_attack(c.method, c.attack) for c in grid.cells}
    assert by_method["standard"].steps == 0
    assert by_method["fast"].steps == 1 and by_method["fast"].alpha == pytest.approx(0.75)
    assert by_method["pgd7"].steps == 7 and by_method["pgd7"].alpha == pytest.approx(2.5 * 0.5 / 7)
    arrays = grid.arrays()
    assert [key for key, _ in arrays] == ["n1g2", "n2g2"]
    assert all(len(cells) == 6 for _, cells in arrays)
    assert {c.shape.nodes for c in arrays[1][1]} == {2}


def test_multi_document_file_and_varying_keys_in_run_ids():
    bench, train, evaluate = load_grids(GRIDS / "good" / "demo_like.yaml")
    assert [g.kind for g in (bench, train, evaluate)] == ["bench", "train", "evaluate"]
    assert {g.name for g in (bench, train, evaluate)} == {"demo-like"}
    assert [g.document for g in (bench, train, evaluate)] == [1, 2, 3]
    assert [c.run_id for c in bench.cells] == ["bench-small_cnn-n1g1"]
    assert bench.cells[0].bench.batch_sizes == [8, 16]
    assert [c.run_id for c in train.cells] == [
        "standard-n1g1-b128-s0-eps0.5",
        "standard-n1g1-b128-s0-eps1",
        "fast-n1g1-b128-s0-eps0.5",
        "fast-n1g1-b128-s0-eps1",
    ]
    assert [c.attack.eps for c in train.cells] == [0.5, 1.0, 0.5, 1.0]
    assert resolve_eval_attack(train.cells[1]).eps == 1.0
    assert [c.run_id for c in evaluate.cells] == ["eval-fast-n1g1-b128-s0-eps0.5", "eval-standard-n1g1-b128-s0-eps0.5"]


def test_executor_override_and_auto(monkeypatch):
    assert load_grid(GRIDS / "good" / "expansion.yaml").executor == "slurm"
    with pytest.raises(GridError) as info:  # the 2-node cells cannot run locally
        load_grid(GRIDS / "good" / "expansion.yaml", executor="local")
    assert all(": grid.shape[1].nodes: " in p for p in info.value.problems)
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert resolve_executor("auto") == "local"
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/" + name)
    assert resolve_executor("auto") == "slurm"
    with pytest.raises(ValueError, match="auto, slurm, local"):
        resolve_executor("pbs")


# -- malformed files -----------------------------------------------------------------------------------


def test_enough_bad_grids():
    assert len(BAD) >= 20


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_grid_names_file_and_key_path(path: Path):
    form, expected = expectation(path)
    with pytest.raises(GridError) as info:
        load_grids(path)
    problems = info.value.problems
    assert problems and str(info.value) == "\n".join(problems)
    for problem in problems:
        assert "\n" not in problem and problem.startswith(f"{path}:"), problem
    if form == "expect":
        assert any(re.match(rf"{re.escape(str(path))}:\d+: {re.escape(expected)}: \S", p) for p in problems), problems
    else:
        assert any(p.startswith(f"{path}:{expected}: ") for p in problems), problems


def test_messages_list_valid_choices():
    def problems(name: str) -> str:
        with pytest.raises(GridError) as info:
            load_grids(GRIDS / "bad" / name)
        return str(info.value)

    assert "cifar10" in problems("unknown_dataset.yaml") and "fashion_mnist" in problems("unknown_dataset.yaml")
    assert "pgdK" in problems("unknown_method_pgd0.yaml")
    assert "generic" in problems("unknown_profile.yaml") and "local-cluster" in problems("unknown_profile.yaml")
    assert "lr, momentum" in problems("unknown_nested_key.yaml")
    assert "nodes, gpus_per_node" in problems("unknown_shape_key.yaml")
    assert "train, evaluate, bench, visualize" in problems("bad_kind.yaml")
    assert "multiple of the world size 3" in problems("batch_not_divisible.yaml")
    # the grid line that holds the value: grid.shape[0] with gpus_per_node 3 is on line 9
    assert ":9: grid.shape[0].gpus_per_node: expected at most 2" in problems("gpus_over_profile_max.yaml")


def test_multi_document_file_fails_as_a_whole():
    path = GRIDS / "bad" / "multi_document_second_bad.yaml"
    with pytest.raises(GridError) as info:
        load_grids(path)
    (problem,) = info.value.problems  # documents 1 and 3 are valid; only document 2's line is reported
    assert problem.startswith(f"{path}:10: grid.method[0]: ")


def test_every_problem_is_reported_at_once(tmp_path: Path):
    path = tmp_path / "many.yaml"
    path.write_text("name: many\nexecutor: local\ndefaults: {epochs: 0, dataset: svhn}\ngrid: {model: [vgg]}\n")
    with pytest.raises(GridError) as info:
        load_grids(path)
    keys = sorted(p.split(": ")[1] for p in info.value.problems)
    assert keys == ["defaults.dataset", "defaults.epochs", "grid.model[0]"]


def test_missing_and_empty_files(tmp_path: Path):
    with pytest.raises(GridError, match="cannot read"):
        load_grids(tmp_path / "nope.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    with pytest.raises(GridError, match="empty grid file"):
        load_grids(tmp_path / "empty.yaml")
    with pytest.raises(GridError, match="expected one YAML document; found 3"):
        load_grid(GRIDS / "good" / "demo_like.yaml")


# -- the paper's grids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "dataset", "model", "eps", "weight_decay"),
    [
        ("paper_cifar10.yaml", "cifar10", "resnet50_cifar", 1.0, 5e-4),
        ("paper_restricted_imagenet.yaml", "restricted_imagenet", "resnet50", 3.0, 1e-4),
    ],
)
def test_paper_grids_have_the_papers_settings(file, dataset, model, eps, weight_decay):
    """Section IV: ResNet-50, 150 epochs, batch 256, lr 0.1 / 10 every 50, eval every 5, eps 1 / 3, 2 vs 8 GPUs."""
    grid = load_grid(ROOT / "experiments" / file)
    assert grid.kind == "train" and grid.executor == "slurm" and grid.profile.name == "generic"
    assert len(grid.cells) == 6
    assert {(c.method, c.shape.nodes, c.shape.gpus_per_node) for c in grid.cells} == {
        (m, n, 2) for m in ("standard", "fast", "pgd7") for n in (1, 4)
    }
    for cell in grid.cells:
        assert (cell.dataset, cell.model, cell.epochs, cell.global_batch_size) == (dataset, model, 150, 256)
        opt = cell.optimizer
        assert (opt.lr, opt.momentum, opt.weight_decay, opt.step_epochs, opt.gamma) == (0.1, 0.9, weight_decay, 50, 0.1)
        assert (cell.eval.every, cell.eval.steps) == (5, 20)
        attack = resolve_attack(cell.method, cell.attack)
        assert (attack.norm, attack.eps, attack.random_start) == ("l2", eps, True)
        assert resolve_eval_attack(cell).eps == eps
        if cell.method == "fast":
            assert (attack.steps, attack.alpha) == (1, pytest.approx(1.5 * eps))
        elif cell.method == "pgd7":
            assert (attack.steps, attack.alpha) == (7, pytest.approx(2.5 * eps / 7))
        else:
            assert cell.method == "standard" and attack.steps == 0
    arrays = dict(grid.arrays())
    assert sorted(arrays) == ["n1g2", "n4g2"]
    assert sorted(c.run_id for c in arrays["n4g2"]) == [f"{m}-n4g2-b256-s0" for m in ("fast", "pgd7", "standard")]
    assert {c.world_size for c in arrays["n4g2"]} == {8} and {c.batch_per_rank for c in arrays["n4g2"]} == {32}


def test_fig1_bench_grid():
    grid = load_grid(ROOT / "experiments" / "fig1_bench.yaml")
    # one cell per shape of the paper's grids (1 GPU for Fig. 1, 2 and 8 ranks for the multi-GPU estimates)
    assert [c.run_id for c in grid.cells] == [f"bench-resnet50_cifar-{s}" for s in ("n1g1", "n1g2", "n4g2")]
    assert [c.world_size for c in grid.cells] == [1, 2, 8]
    for cell in grid.cells:
        assert (grid.kind, cell.dataset, cell.attack.eps) == ("bench", "cifar10", 1.0)
        assert cell.bench.methods == ["standard", "fast", "pgd7"] and {32, 128} <= set(cell.bench.batch_sizes)


# -- site profiles and submitit parameters ---------------------------------------------------------------


def test_shipped_profiles_load():
    assert {"generic", "local-cluster", "supercloud"} <= set(available_profiles())
    local = load_profile("local-cluster")
    assert (local.partition, local.gpu_request) == ("debug", "gpus_per_node")
    assert (local.max_nodes, local.max_gpus_per_node) == (4, 2)
    assert local.env == {"GLOO_SOCKET_IFNAME": "lo"}
    assert load_profile("supercloud").gpu_request == "gres"
    assert load_profile(str(ROOT / "slurm_templates" / "generic.yaml")).name == "generic"
    with pytest.raises(ProfileError, match=r"available: .*generic"):
        load_profile("nowhere")


def test_bad_profile_lists_every_problem(tmp_path: Path):
    path = tmp_path / "site.yaml"
    path.write_text("partiton: gpu\ngpu_request: mig\nadditional: {gres: 'gpu:2'}\nenv: {'BAD-NAME': x}\n")
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    keys = [p.split(": ")[1] for p in info.value.problems]
    assert keys == ["partiton", "gpu_request", "additional.gres", "env.BAD-NAME"]
    assert "gpus_per_node, gres, none" in str(info.value)


def sbatch_script(monkeypatch, tmp_path: Path, params: dict, spec: RunSpec) -> str:
    """What submitit would submit: update_parameters validates every name against submitit's own list."""
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # no srun needed
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm", **executor_kwargs(spec))
    executor.update_parameters(**params)
    assert executor._executor.max_num_timeout == spec.resources.max_requeues
    local = submitit.AutoExecutor(folder=tmp_path / "local", cluster="local")
    local.update_parameters(**{**params, "nodes": 1})  # the same names serve executor: local (one node)
    return executor._executor._make_submission_file_text("python -m job", "uid")


def test_slurm_parameters_gpus_per_node_style(monkeypatch, tmp_path: Path):
    grid = load_grid(GRIDS / "good" / "expansion.yaml")
    cell = grid.arrays()[1][1][0]
    params = slurm_parameters(grid.profile, cell)
    assert params["gpus_per_node"] == 2 and params["tasks_per_node"] == 2 and params["nodes"] == 2
    assert "slurm_gres" not in params
    script = sbatch_script(monkeypatch, tmp_path, params, cell)
    expected = "--gpus-per-node=2 --ntasks-per-node=2 --nodes=2 --cpus-per-task=2 --partition=debug --time=10"
    for line in [*expected.split(), "--signal=USR2@30"]:
        assert f"#SBATCH {line}\n" in script
    assert "export GLOO_SOCKET_IFNAME=lo\n" in script and "gres" not in script


def test_slurm_parameters_gres_style(monkeypatch, tmp_path: Path):
    profile = tmp_path / "gres-site.yaml"
    profile.write_text(
        "partition: gpu\naccount: proj\nqos: high\nconstraint: v100\ngpu_request: gres\n"
        "setup: [module load cuda]\nsignal_delay_s: 120\nadditional: {mail-type: END, exclusive: true}\n"
    )
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(
        "name: gres\nprofile: gres-site.yaml\nexecutor: slurm\n"
        "defaults: {global_batch_size: 256, shape: {nodes: 4, gpus_per_node: 2}, resources: {mem_gb: 64}}\n"
    )
    grid = load_grid(grid_file)  # the profile path is found next to the grid file
    (cell,) = grid.cells
    params = slurm_parameters(grid.profile, cell)
    assert params["slurm_gres"] == "gpu:2" and "gpus_per_node" not in params
    script = sbatch_script(monkeypatch, tmp_path, params, cell)
    expected = "--gres=gpu:2 --ntasks-per-node=2 --nodes=4 --partition=gpu --account=proj --qos=high"
    for line in [
        *expected.split(),
        "--constraint=v100",
        "--mem=64GB",
        "--time=60",
        "--signal=USR2@120",
        "--mail-type=END",
        "--exclusive",
    ]:
        assert f"#SBATCH {line}\n" in script
    assert "gpus-per-node" not in script and "\nmodule load cuda\n" in script

    typed = load_profile(str(profile))
    typed.gres_type = "volta"
    assert slurm_parameters(typed, cell)["slurm_gres"] == "gpu:volta:2"


# -- the report section (orchestrator.grid.report_settings) ----------------------------------------------------------

REPORT_GRID = """\
name: with-report
kind: train
executor: local
defaults: {dataset: fashion_mnist, model: small_cnn, epochs: 1, global_batch_size: 8}
grid:
  method: [standard]
"""


def test_report_section_is_optional_and_read(tmp_path: Path):
    from orchestrator.grid.report_settings import ReportSettings

    path = tmp_path / "g.yaml"
    path.write_text(REPORT_GRID)
    assert load_grid(path).report is None
    path.write_text(REPORT_GRID + "report:\n  target_adv_acc: 0.6\n")
    assert load_grid(path).report == ReportSettings(target_adv_acc=0.6)
    path.write_text(REPORT_GRID + "report: {target_adv_acc: 1}\n")  # 100 % is a valid (if demanding) target
    assert load_grid(path).report == ReportSettings(target_adv_acc=1.0)
    path.write_text(REPORT_GRID + "report: {}\n")  # an empty section: the stated rule
    assert load_grid(path).report == ReportSettings()


@pytest.mark.parametrize(
    ("section", "line", "key", "message"),
    [
        ("report:\n  target_adv_acc: 65.5\n", 8, "report.target_adv_acc", "expected a fraction in (0, 1]"),
        ("report:\n  target_adv_acc: 0\n", 8, "report.target_adv_acc", "expected a fraction in (0, 1]"),
        ("report:\n  target_adv_acc: '60%'\n", 8, "report.target_adv_acc", "got '60%'"),
        ("report:\n  target_adv_acc: true\n", 8, "report.target_adv_acc", "got True"),
        ("report:\n  target_adv_acc: .nan\n", 8, "report.target_adv_acc", "expected a fraction"),
        ("report:\n  target_adv_acc:\n", 8, "report.target_adv_acc", "got None"),
        ("report:\n  targett: 0.6\n", 8, "report.targett", "unknown key; valid keys of report: target_adv_acc, target"),
        ("report: 0.6\n", 7, "report", "expected a mapping with keys target_adv_acc, target; got 0.6"),
    ],
)
def test_bad_report_sections_are_one_line(tmp_path: Path, section: str, line: int, key: str, message: str):
    path = tmp_path / "g.yaml"
    path.write_text(REPORT_GRID + section)
    with pytest.raises(GridError) as info:
        load_grids(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:{line}: {key}: ") and message in problem, problem
    assert "\n" not in problem


def test_report_sections_of_one_experiment_must_agree(tmp_path: Path):
    second = REPORT_GRID.replace("[standard]", "[fast]")
    path = tmp_path / "g.yaml"
    path.write_text(REPORT_GRID + "report: {target_adv_acc: 0.6}\n---\n" + second)  # the second inherits
    first, other = load_grids(path)
    assert first.report is not None and other.report is None  # an experiment's report: any document may give it
    path.write_text(REPORT_GRID + "report: {target_adv_acc: 0.6}\n---\n" + second + "report: {target_adv_acc: 0.6}\n")
    load_grids(path)
    path.write_text(REPORT_GRID + "report: {target_adv_acc: 0.6}\n---\n" + second + "report: {target_adv_acc: 0.7}\n")
    with pytest.raises(GridError) as info:
        load_grids(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:15: report: differs from document 1's report section"), problem


def test_fast_recipes_grid_states_the_reference_target():
    """experiments/fast_recipes.yaml gives the target its committed reference run used (95 % of the best 69.0 %)."""
    import pandas as pd

    grids = load_grids(ROOT / "experiments" / "fast_recipes.yaml")
    reference = pd.read_csv(ROOT / "results" / "reference" / "fast-recipes" / "report" / "time_to_target.csv")
    assert {g.report.target_adv_acc for g in grids if g.report} == set(reference["target_adv_acc"]) == {0.6555}
