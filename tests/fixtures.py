"""Test data builders shared by several test modules (fixtures proper live in tests/conftest.py).

Small datasets generated in the real on-disk formats, for loader tests and quick end-to-end runs:

- make_cifar10: torchvision's `cifar-10-batches-py` python pickles (str keys, as the official Python 2
  pickles read with encoding="latin1"). Channel 0 is noise; channel 1 is the constant `cifar_green(label)`
  so a test can check the image/label pairing and the CHW layout.
- make_imagenet: <root>/{train,val}/<wnid>/*.JPEG for the given ImageNet class indices, with fake WordNet
  ids `fake_wnid(i)` (sorted order = index order) and a <root>/wnids.txt listing all 1000 in order.
- make_fashion_mnist: torchvision layout <root>/FashionMNIST/raw/*-ubyte[.gz] (IDX format).
Labels are a seeded shuffle of balanced classes (not sorted, so "the first n" is not a stratified subset).

Also: needs_fmnist (skip unless the real Fashion-MNIST files are installed), bench_rows (a synthetic bench.csv
with known per-pass costs), free_port (for torch.distributed), normalise (machine-specific paths in golden
text -> placeholders), and the helpers of train jobs on the local Slurm cluster (write_grid, wait_until,
wait_terminal, sacct, in_squeue, assert_epochs_once).
"""

from __future__ import annotations

import gzip
import pickle
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")  # the Debian package dataset-fashion-mnist
needs_fmnist = pytest.mark.skipif(
    not (DEBIAN_FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Debian dataset-fashion-mnist not installed"
)


def cifar_green(label: int) -> int:
    """The constant value of channel 1 in every make_cifar10 image of class `label`."""
    return 20 * label + 5


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes)


def make_cifar10(root: str | Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> Path:
    """CIFAR-10 pickles under root/cifar-10-batches-py: n_train images spread over data_batch_1..5."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def write(name: str, labels: np.ndarray) -> None:
        n = len(labels)
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        images[:, 1] = np.array([cifar_green(int(y)) for y in labels], dtype=np.uint8)[:, None, None]
        batch = {
            "batch_label": name,
            "labels": [int(y) for y in labels],
            "data": images.reshape(n, 3 * 32 * 32),  # row-major: 1024 R, 1024 G, 1024 B per image
            "filenames": [f"img_{name}_{i}.png" for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)

    # balanced over the whole training set, then cut into the five batch files
    for i, part in enumerate(np.array_split(_balanced_labels(n_train, 10, rng), 5), start=1):
        write(f"data_batch_{i}", part)
    write("test_batch", _balanced_labels(n_test, 10, rng))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": n_train // 5, "num_vis": 3072}, f, protocol=2)
    return Path(root)


def fake_wnid(index: int) -> str:
    """A WordNet-id-shaped folder name whose sorted position is the ImageNet class index."""
    return f"n{index:08d}"


def make_imagenet(
    root: str | Path,
    class_ids: list[int],
    per_class: int = 2,
    wnids_file: bool = True,
    size: tuple[int, int] = (40, 32),
    seed: int = 0,
) -> Path:
    """ImageNet-style train/val folders holding only `class_ids` (ImageNet indices 0..999), per_class JPEGs
    each; wnids_file writes root/wnids.txt with all 1000 fake ids in standard order."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split in ("train", "val"):
        for index in class_ids:
            folder = root / split / fake_wnid(index)
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{fake_wnid(index)}_{k}.JPEG", format="JPEG")
    if wnids_file:
        (root / "wnids.txt").write_text("".join(f"{fake_wnid(i)}\n" for i in range(1000)))
    return root


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(f">4B{array.ndim}I", 0, 0, 8, array.ndim, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_fashion_mnist(root: str | Path, n_train: int = 50, n_test: int = 20, gz: bool = True, seed: int = 0) -> Path:
    """Fashion-MNIST IDX files in torchvision's layout root/FashionMNIST/raw/ (noise images)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "FashionMNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, size=(n, 28, 28)), gz)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", _balanced_labels(n, 10, rng), gz)
    return Path(root)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (MASTER_PORT of a test process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_rows(
    passes: Mapping[tuple[str, str, int], float],
    pass_s: Callable[[int], float],
    batches: Iterable[int],
    *,
    device: str = "x86_64",
    model: str = "small_cnn",
    dataset: str = "cifar10",
    repeats: int = 5,
    spread: float = 0.0,
    extra: Mapping[str, object] | None = None,
) -> list[dict[str, object]]:
    """bench.csv rows with a known cost model: `passes[(what, method, steps)]` passes of `pass_s(b)` seconds.

    One row per batch size and entry (batch sizes outer); p10/p90 are median * (1 -/+ spread); `extra` columns
    (e.g. precision) come last, in the order given.
    """
    rows: list[dict[str, object]] = []
    for b in batches:
        for (what, method, steps), k in passes.items():
            t = k * pass_s(b)
            rows.append({"device": device, "model": model, "dataset": dataset, "method": method,
                         "attack_steps": steps, "batch_size": b, "repeats": repeats, "median_s": t,
                         "p10_s": (1 - spread) * t if spread else t, "p90_s": (1 + spread) * t if spread else t,
                         "what": what, "attack_restarts": 1, **(extra or {})})  # fmt: skip
    return rows


def normalise(text: str, results: Path, repo: Path | None = None) -> str:
    """Machine-specific paths -> placeholders: the results root, the interpreter jobs run, the checkout (if given)."""
    text = text.replace(str(results), "<RESULTS>").replace(sys.executable, "<PYTHON>")
    return text if repo is None else text.replace(str(repo), "<REPO>")


def train_standard_and_fast(root: Path, experiment: str, eps: float) -> Path:
    """root/<experiment>/runs/{standard,fast}: small_cnn trained for 3 epochs on 3000 Fashion-MNIST images, one
    thread (the models the evaluate and AutoAttack tests attack); returns root."""
    import torch

    from workloads.kinds.train import train
    from workloads.spec import Attack, Optimizer, RunSpec, Validation

    torch.set_num_threads(1)
    for method in ("standard", "fast"):
        spec = RunSpec(
            experiment=experiment,
            run_id=method,
            dataset="fashion_mnist",
            train_subset=3000,
            val_subset=200,
            model="small_cnn",
            method=method,
            epochs=3,
            global_batch_size=64,
            seed=0,
            threads=1,
            optimizer=Optimizer(lr=0.05, step_epochs=100),
            attack=Attack(norm="l2", eps=eps),
            eval=Validation(every=100, steps=3),
        )
        train(spec, root / experiment / "runs" / method)
    return root


def manual_sgd_training(spec: Any, scheduler: Callable[[Any, int], Any] | None = None) -> dict[str, Any]:
    """Plain single-process SGD over the global batches that DistributedSampler(seed) hands out; `scheduler`
    (optimizer, steps per epoch) -> an lr scheduler stepped after every optimizer step (None: constant lr).

    With shuffle, DistributedSampler permutes with a generator seeded seed + epoch and gives rank r the
    indices r, r+W, ...; so the union of the ranks' b-th batches is the b-th global batch of the permutation."""
    import math

    import torch
    import torch.nn.functional as F

    from workloads.assets.data import build_datasets
    from workloads.assets.models import build_model

    data = build_datasets(spec)
    xs = torch.stack([data.train[i][0] for i in range(len(data.train))])
    ys = data.train.targets
    torch.manual_seed(spec.seed)
    info = data.info
    model = build_model(spec.model, info.num_classes, info.in_channels, info.mean, info.std)
    o = spec.optimizer
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    sched = scheduler(opt, math.ceil(len(ys) / spec.global_batch_size)) if scheduler else None
    for epoch in range(spec.epochs):
        perm = torch.randperm(len(ys), generator=torch.Generator().manual_seed(spec.seed + epoch))
        for b in range(0, len(perm), spec.global_batch_size):
            idx = perm[b : b + spec.global_batch_size]
            loss = F.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
    return model.state_dict()


def evaluate_interrupted_then_resumed(
    spec: Any, run_dir: Path, monkeypatch: pytest.MonkeyPatch, die_at: int
) -> list[int]:
    """Run the evaluate kind in run_dir, let it die during its `die_at`-th attacked batch, run it again; returns
    the first example index of every batch each run attacked (evaluate.batch_counts' fourth argument)."""
    from workloads.kinds import evaluate
    from workloads.runtime import distributed

    calls: list[int] = []
    original = evaluate.batch_counts

    class Killed(Exception):
        pass

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[3])
        if len(calls) == die_at:
            raise Killed
        return original(*args, **kwargs)

    def recorded(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[3])
        return original(*args, **kwargs)

    monkeypatch.setattr(evaluate, "batch_counts", interrupted)
    with pytest.raises(Killed):
        evaluate.main(spec, run_dir, distributed.single(spec))
    monkeypatch.setattr(evaluate, "batch_counts", recorded)
    evaluate.main(spec, run_dir, distributed.single(spec))
    return calls


# ---------------------------------------------------------------------------------------------------------------
# Train jobs on the real local Slurm cluster (tests/test_slurm.py, tests/test_rank_faults.py)

TRAIN_GRID = """\
name: {name}
kind: train
profile: {profile}
executor: slurm
defaults:
  model: small_cnn
  dataset: fashion_mnist
  method: fast
  epochs: {epochs}
  train_subset: {train_subset}
  val_subset: 256
  global_batch_size: 64
  eval: {{every: {eval_every}, steps: 2}}
  resources: {{timeout_min: {timeout_min}, max_requeues: {max_requeues}}}
{extra}grid:
  shape:
{shapes}
"""


def write_grid(folder: Path, name: str, shapes: list[tuple[int, int]], **kw: Any) -> Path:
    """A train grid of the small CNN on a Fashion-MNIST subset, one cell per (nodes, gpus_per_node); `extra`:
    more lines under defaults (indented two spaces)."""
    values = {"profile": "local-cluster", "epochs": 2, "train_subset": 512, "timeout_min": 5, "eval_every": 1,
              "max_requeues": 6, "extra": "", **kw}  # fmt: skip
    shape_lines = "\n".join(f"    - {{nodes: {n}, gpus_per_node: {g}}}" for n, g in shapes)
    path = folder / f"{name}.yaml"
    path.write_text(TRAIN_GRID.format(name=name, shapes=shape_lines, **values))
    return path


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """predicate()'s first truthy value, polled every `interval` s; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_terminal(exp_dir: Path, timeout: float, stall_s: float | None = None) -> dict[str, Any]:
    """run_id -> CellStatus once every cell of the experiment is finished, failed or cancelled.

    With `stall_s`, `timeout` is only the cap: the wait goes on as long as the cells make progress (a new epoch,
    attempt or state) at least every `stall_s` seconds, so a busy machine makes the test slower, not red."""
    from orchestrator.monitor import status as cell_state

    if stall_s is None:

        def done() -> dict[str, Any] | None:
            cells = cell_state.poll(exp_dir)
            finished = cells and all(c.state in cell_state.TERMINAL for c in cells)
            return {c.run_id: c for c in cells} if finished else None

        return wait_until(done, timeout, f"every cell of {exp_dir.name} to end", interval=1.0)
    cap = time.monotonic() + timeout
    seen: object = None
    stalled_at = time.monotonic() + stall_s
    while True:
        cells = cell_state.poll(exp_dir)
        if cells and all(c.state in cell_state.TERMINAL for c in cells):
            return {c.run_id: c for c in cells}
        now = time.monotonic()
        progress = [(c.run_id, c.state, c.epoch, c.attempts) for c in cells]
        if progress != seen:
            seen, stalled_at = progress, now + stall_s
        if now > stalled_at or now > cap:
            why = f"no progress for {stall_s:.0f} s" if now > stalled_at else f"the cap of {timeout:.0f} s"
            raise AssertionError(f"waiting for every cell of {exp_dir.name} to end: {why}; last seen {progress}")
        time.sleep(1.0)


def sacct(job_id: str, fields: str) -> str:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", fields], capture_output=True, text=True)
    return out.stdout.strip()


def in_squeue(job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True)
    return bool(out.stdout.strip())


def assert_epochs_once(run_dir: Path, epochs: int) -> None:
    """epochs.csv holds epochs 1..epochs, each once, with a strictly increasing elapsed_s (nothing lost or doubled)."""
    from workloads import layout

    rows = layout.read_csv(run_dir / layout.EPOCHS)
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    elapsed = [float(r["elapsed_s"]) for r in rows]
    assert elapsed == sorted(elapsed) and len(set(elapsed)) == len(elapsed), f"elapsed_s not increasing: {elapsed}"


def quiet(_: str) -> None:
    return None


def keep_figures(monkeypatch: pytest.MonkeyPatch, module: Any) -> dict[str, Any]:
    """The figures `module.save` writes, by stem, still open for the test to inspect (they are written as well)."""
    figures: dict[str, Any] = {}
    real_save = module.save

    def keep(fig: Any, out_dir: Path, stem: str) -> list[Path]:
        figures[stem] = fig
        paths: list[Path] = real_save(fig, out_dir, stem)
        return paths

    monkeypatch.setattr(module, "save", keep)
    return figures
