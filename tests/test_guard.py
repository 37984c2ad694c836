"""The catastrophic-overfitting guard: a fixed subset, the flag rule, resume, and real training runs
that collapse (Linf FGSM-RS with a large step) or stay healthy (L2 fast)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch

from tests.test_train import tiny_spec
from workloads import layout
from workloads.assets.data import build_datasets
from workloads.kinds.train import train
from workloads.spec import from_dict
from workloads.training import guard as guard_module
from workloads.training.guard import Guard, History, guard_attack, guard_dataset, guard_indices

pytestmark = pytest.mark.usefixtures("one_thread")


def test_subset_is_fixed_and_plain() -> None:
    """Indices depend on the seed and the set size only (not rank, epoch or world size); no augmentation."""
    spec = tiny_spec(guard={"action": "flag", "examples": 32}, augment=True)
    a, b = guard_indices(spec, 384), guard_indices(spec, 384)
    assert torch.equal(a, b) and len(a) == 32 and torch.equal(a, a.sort().values) and len(set(a.tolist())) == 32
    assert not torch.equal(a, guard_indices(tiny_spec(seed=1, guard={"examples": 32}), 384))
    data = build_datasets(spec)
    subset = guard_dataset(spec, data.train)
    x1, y1 = subset[0]
    x2, y2 = subset[0]
    assert torch.equal(x1, x2) and y1 == y2  # augmentation would crop at random
    assert y1 == int(data.train.targets[a[0]])


def test_guard_attack_is_the_training_threat_model() -> None:
    spec = tiny_spec(method="fgsm_rs", attack={"eps": 0.3, "eps_warmup_epochs": 2}, eval={"steps": 5, "eps": 0.1})
    attack = guard_attack(spec)
    assert (attack.norm, attack.eps, attack.steps, attack.random_start) == ("linf", 0.3, 5, True)
    assert attack.alpha == pytest.approx(2.5 * 0.3 / 5)
    assert guard_attack(from_dict({**spec.to_dict(), "guard": {"steps": 3}})).steps == 3


def test_history_from_rows_and_flag_rule() -> None:
    rows = [
        {"epoch": "1", "guard_adv_acc": "0.3", "co_flag": "0"},
        {"epoch": "2", "guard_adv_acc": "0.5", "co_flag": "0"},
        {"epoch": "3", "guard_adv_acc": "0.25", "co_flag": "1"},
        {"epoch": "4", "guard_adv_acc": "0.0", "co_flag": "1"},  # past the checkpoint: ignored
        {"epoch": "5", "guard_adv_acc": "", "co_flag": ""},
    ]
    h = History.from_rows(rows, completed=3)
    assert (h.best, h.best_epoch, h.flagged, h.flagged_acc) == (0.5, 2, 3, 0.25)
    assert History.from_rows(rows, completed=2).flagged is None
    assert History.from_rows([{"epoch": "1", "clean_acc": "0.5"}], completed=1) == History()  # an old csv


def quiet_train(spec, run_dir: Path) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        return train(spec, run_dir)


def test_inactive_guard_changes_nothing(tmp_path: Path) -> None:
    spec = tiny_spec(epochs=1, train_subset=128, eval={"every": 1, "steps": 1})
    result = quiet_train(spec, tmp_path)
    assert "co_flag" not in result and "stop_reason" not in result
    (row,) = layout.read_csv(tmp_path / layout.EPOCHS)
    assert (row["guard_adv_acc"], row["co_flag"], row["guard_s"]) == ("", "", "")
    dummy = Guard(spec, [], None, 1, History())  # type: ignore[arg-type]
    assert dummy.measure(None, 1, None, None) == {} and dummy.summary() == {}  # type: ignore[arg-type]


def test_stop_ends_the_run_as_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scripted guard accuracies 0.5, 0.6, 0.35 (a drop of 0.25 > 0.2): epoch 3 is flagged, the run stops there
    with its reason in result.json, is validated at that epoch, and a rerun (resubmission) stays stopped."""
    script = iter([0.5, 0.6, 0.35, 0.1, 0.1])
    real = guard_module.dataset_accuracy

    def scripted(*args, **kwargs):
        clean, _, n = real(*args, **kwargs)
        return clean, next(script), n

    monkeypatch.setattr(guard_module, "dataset_accuracy", scripted)
    spec = tiny_spec(epochs=5, train_subset=128, eval={"every": 4, "steps": 1},
                     guard={"action": "stop", "examples": 16, "steps": 1})  # fmt: skip
    result = quiet_train(spec, tmp_path)
    rows = layout.read_csv(tmp_path / layout.EPOCHS)
    assert [(r["epoch"], r["co_flag"]) for r in rows] == [("1", "0"), ("2", "0"), ("3", "1")]
    assert rows[2]["adv_acc"] != ""  # validated at the stop although eval.every is 4
    saved = layout.read_json(tmp_path / layout.RESULT)
    assert saved["co_flag"] is True and saved["co_epoch"] == 3 and saved["epochs"] == 3
    assert "epoch 3" in saved["stop_reason"] and "best 0.6000 (epoch 2)" in saved["stop_reason"]
    assert result["stop_reason"] == saved["stop_reason"]
    assert (tmp_path / layout.CKPT_BEST).exists()
    again = quiet_train(spec, tmp_path)  # resumes from epoch 3, re-reads the flag, trains nothing
    assert again["epochs"] == 3 and again["stop_reason"] == saved["stop_reason"]
    assert len(layout.read_csv(tmp_path / layout.EPOCHS)) == 3


def test_flag_keeps_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = iter([0.5, 0.2, 0.45])
    real = guard_module.dataset_accuracy
    monkeypatch.setattr(guard_module, "dataset_accuracy", lambda *a, **k: (real(*a, **k)[0], next(script), 16))
    spec = tiny_spec(epochs=3, train_subset=128, eval={"every": 3, "steps": 1},
                     guard={"action": "flag", "examples": 16, "steps": 1})  # fmt: skip
    result = quiet_train(spec, tmp_path)
    assert [r["co_flag"] for r in layout.read_csv(tmp_path / layout.EPOCHS)] == ["0", "1", "0"]
    assert (result["epochs"], result["co_flag"], result["co_epoch"], result["stop_reason"]) == (3, True, 2, None)


def real_run(method: str, norm: str, eps: float, alpha: float, lr: float, epochs: int, action: str) -> dict:
    """Fashion-MNIST, 2048 training examples, small CNN, no augmentation; the guard on 256 of them (PGD-10)."""
    return {
        "run_id": method, "dataset": "fashion_mnist", "train_subset": 2048, "val_subset": 64, "augment": False,
        "model": "small_cnn", "method": method, "global_batch_size": 64, "epochs": epochs,
        "optimizer": {"lr": lr, "step_epochs": 100}, "attack": {"norm": norm, "eps": eps, "alpha": alpha},
        "eval": {"every": 100, "steps": 2}, "guard": {"action": action, "examples": 256, "steps": 10},
    }  # fmt: skip


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_guard_fires_on_catastrophic_overfitting(tmp_path: Path) -> None:
    """Linf FGSM-RS with alpha = 2 eps (pure FGSM: the step saturates the clamp) at eps 0.4 and lr 0.15: the guard
    subset's PGD accuracy climbs, then collapses while the FGSM training accuracy stays high: the model beats its
    own one-step attack, not PGD. action stop ends the run there.

    Whether and when a run overfits catastrophically depends on its exact numerics (the training seed, and the CPU's
    kernels, which change the trajectory as a seed does): over training seeds 0-3, three overfitted within 20 epochs
    (epochs 7-17) and one did not. So the claim is tested on up to four seeds, stopping at the first that overfits:
    the guard must fire in a run that collapses, and must not fire in one that does not."""
    for seed in (0, 1, 3, 4):
        spec = {**real_run("fgsm_rs", "linf", 0.4, 0.8, 0.15, 20, "stop"), "seed": seed}
        result = quiet_train(from_dict(spec), tmp_path / f"s{seed}")
        rows = layout.read_csv(tmp_path / f"s{seed}" / layout.EPOCHS)
        if not result["co_flag"]:
            accs = [float(r["guard_adv_acc"]) for r in rows]
            assert all(max(accs[: i + 1]) - a <= 0.2 for i, a in enumerate(accs)), accs  # no collapse missed
            continue
        assert result["stop_reason"]
        assert len(rows) == result["co_epoch"] < 20  # stopped at the first flagged epoch
        flagged, before = rows[-1], rows[:-1]
        best = max(float(r["guard_adv_acc"]) for r in before)
        assert best - float(flagged["guard_adv_acc"]) > 0.2
        assert float(flagged["train_acc"]) - float(flagged["guard_adv_acc"]) > 0.3  # robust to FGSM only
        assert all(r["co_flag"] == "0" for r in before) and flagged["adv_acc"] != ""
        return
    pytest.fail("no catastrophic overfitting in four seeds: make the recipe harsher (eps, lr)")


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_healthy_fast_run_does_not_fire(tmp_path: Path) -> None:
    """L2 fast (alpha 1.5 eps, eps 1) on the same data: the guard's PGD accuracy rises steadily (0.44 -> 0.76)."""
    result = quiet_train(from_dict(real_run("fast", "l2", 1.0, 1.5, 0.05, 8, "flag")), tmp_path)
    rows = layout.read_csv(tmp_path / layout.EPOCHS)
    assert result["co_flag"] is False and result["co_epoch"] is None and len(rows) == 8
    adv = [float(r["guard_adv_acc"]) for r in rows]
    assert adv[-1] > adv[0] + 0.2 and all(r["co_flag"] == "0" for r in rows)


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_free_and_the_guard_under_ddp(tmp_path: Path) -> None:
    """Two gloo ranks train free (2 replays) with the guard on 51 examples (shards of 26 + 25): the guard's
    clean accuracy equals one process's on the same weights (exact all-reduced counts, same subset)."""
    from tests.test_distributed import torchrun_entry, write_spec
    from workloads.assets import checkpoint
    from workloads.runtime import distributed
    from workloads.spec import resolve_eval_attack
    from workloads.training.accuracy import dataset_accuracy

    spec_path, spec = write_spec(
        tmp_path / "ddp-free", method="free", epochs=1, attack={"norm": "linf", "eps": 0.1, "replays": 2},
        guard={"action": "flag", "examples": 51, "steps": 2},
    )  # fmt: skip
    torchrun_entry(spec_path)
    (row,) = layout.read_csv(spec_path.parent / layout.EPOCHS)
    assert row["world_size"] == "2" and row["co_flag"] == "0"
    model, _ = checkpoint.load_model(spec_path.parent, "last")
    single = from_dict({**spec.to_dict(), "shape": {"nodes": 1, "gpus_per_node": 1}})
    subset = guard_dataset(single, build_datasets(single).train)
    no_attack = resolve_eval_attack(from_dict({**single.to_dict(), "eval": {"steps": 0}}))
    clean, _, n = dataset_accuracy(model, subset, distributed.single(single), no_attack, batch_size=16)
    assert n == 51 and float(row["guard_clean_acc"]) == clean
