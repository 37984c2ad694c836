"""compile: true under DDP and across a resume, end to end through `python -m workloads.entry` on 2 gloo ranks:
the compiled ranks train like the eager ranks (within float reordering), their attack passes see frozen weights
and compute no weight gradient, and a compiled run stopped after epoch 1 and resumed ends bit-identical to the
uninterrupted compiled run.

Inductor compiles the small CNN's fast step in about 20 s on 2 shared cores (both ranks at once, a cold cache);
the test points TORCHINDUCTOR_CACHE_DIR at its own directory, so the first compiled run is always cold and the
resumed runs reuse its kernels (as a requeued Slurm job does on the same node).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.fixtures import free_port
from tests.test_distributed import ROOT, clean_env, write_spec
from workloads import layout
from workloads.assets import checkpoint

# The child runs workloads.entry with engine.attack_from wrapped: per attack pass, whether any parameter required
# grad and whether any parameter's .grad changed; one JSON line per pass in $ATTACK_LOG.rank{RANK}.
RECORDING_ENTRY = """
import json, os, torch
import workloads.training.engine as engine
from workloads import entry
real, log = engine.attack_from, open(os.environ["ATTACK_LOG"] + ".rank" + os.environ["RANK"], "w")

def recording(model, *args, **kwargs):
    params = list(model.parameters())
    before = [None if p.grad is None else p.grad.clone() for p in params]
    delta = real(model, *args, **kwargs)
    same = [(a is None and p.grad is None) or (a is not None and p.grad is not None and torch.equal(a, p.grad))
            for a, p in zip(before, params)]
    log.write(json.dumps({"requires_grad": any(p.requires_grad for p in params), "grads_unchanged": all(same),
                          "compiled": type(model).__name__ == "OptimizedModule"}) + "\\n")
    log.flush()
    return delta

engine.attack_from = recording
entry.cli()
"""


def two_ranks(spec_path: Path, env: dict[str, str], recording: bool = False) -> None:
    """`python -m workloads.entry SPEC` on 2 gloo ranks (torchrun's variables), optionally with RECORDING_ENTRY."""
    port = free_port()
    head = ["-c", RECORDING_ENTRY] if recording else ["-m", "workloads.entry"]
    procs = []
    for rank in (0, 1):
        rank_env = clean_env() | env | {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
        rank_env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, *head, str(spec_path)], env=rank_env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]


def compiled_spec(run_dir: Path, **overrides: Any) -> Path:
    """fast (L2, 1 attack step): 256 examples, batch 32 per rank, 4 steps per epoch, an evaluation at the end."""
    settings: dict[str, Any] = {"method": "fast", "epochs": 2, "eval": {"every": 2, "steps": 1}, **overrides}
    return write_spec(run_dir, **settings)[0]


def weights_of(run_dir: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(run_dir / layout.CKPT_LAST)["model"]


@pytest.mark.slow
def test_compiled_ddp_matches_eager_ddp_freezes_attack_weights_and_resumes_exactly(tmp_path: Path) -> None:
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "ATTACK_LOG": str(tmp_path / "attack")}
    two_ranks(compiled_spec(tmp_path / "eager", compile=False), env)
    two_ranks(compiled_spec(tmp_path / "compiled", compile=True), env, recording=True)
    eager, compiled = weights_of(tmp_path / "eager"), weights_of(tmp_path / "compiled")
    assert compiled.keys() == eager.keys()  # the plain module is saved: no _orig_mod. / module. prefix
    # Not bit-identical: inductor's fused kernels sum in another order (e.g. vectorised conv/linear reductions), so
    # each step differs in the last bits; 8 steps of SGD keep that far below the tolerance.
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], atol=1e-5, rtol=1e-4, msg=name)
    assert not torch.equal(compiled["head.weight"], eager["head.weight"])  # the compiled path did run
    for rank in (0, 1):
        passes = [json.loads(line) for line in Path(f"{env['ATTACK_LOG']}.rank{rank}").read_text().splitlines()]
        assert len(passes) == 8 and all(p["compiled"] for p in passes)  # 2 epochs x 4 steps, 1 attack pass each
        assert not any(p["requires_grad"] for p in passes) and all(p["grads_unchanged"] for p in passes)

    resumed = compiled_spec(tmp_path / "resumed", compile=True, epochs=1)  # stops after epoch 1's checkpoint
    two_ranks(resumed, env)
    assert checkpoint.load(resumed.parent / layout.CKPT_LAST)["epoch"] == 1
    two_ranks(compiled_spec(tmp_path / "resumed", compile=True), env)  # resumes epoch 2 from it, compiles again
    rows = layout.read_csv(resumed.parent / layout.EPOCHS)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    again = weights_of(tmp_path / "resumed")
    assert all(torch.equal(again[k], compiled[k]) for k in compiled)
    straight = layout.read_csv(tmp_path / "compiled" / layout.EPOCHS)  # (the 1-epoch run evaluated its end)
    for key in ("train_loss", "train_acc", "lr"):
        assert [r[key] for r in rows] == [r[key] for r in straight], key
    assert (rows[1]["clean_acc"], rows[1]["adv_acc"]) == (straight[1]["clean_acc"], straight[1]["adv_acc"])
