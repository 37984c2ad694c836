"""workloads.runtime.allocator: fixed glibc malloc thresholds (each case in a fresh process: the setting is global)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only"
)

# Allocate 4 MiB with libc's malloc and report how many chunks glibc serves by mmap (mallinfo2().hblks):
# with its default 128 KiB threshold the block is mmapped; with the threshold fixed at 32 MiB it is not.
PROBE = """
import ctypes, json, sys
sys.path.insert(0, {root!r})
from workloads.runtime import allocator
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
applied = allocator.tune_malloc()
before = libc.mallinfo2().hblks
block = libc.malloc(4 * 2**20)
print(json.dumps({{"applied": applied, "mmapped": libc.mallinfo2().hblks - before}}))
"""


def probe(switch: str | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "FASTROBUST_TUNE_MALLOC"}
    if switch is not None:
        env["FASTROBUST_TUNE_MALLOC"] = switch
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT))], env=env, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return json.loads(out)


def test_tuned_process_serves_mib_blocks_from_the_heap() -> None:
    tuned = probe(None)
    assert tuned == {"applied": {"mmap_threshold": 32 * 2**20, "trim_threshold": 2**30}, "mmapped": 0}


def test_opt_out_keeps_glibc_defaults() -> None:
    assert probe("0") == {"applied": None, "mmapped": 1}


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_env_json_records_the_setting(tmp_path: Path) -> None:
    """A job through workloads.entry tunes malloc before it loads anything and says so in env.json."""
    from tests.test_distributed import clean_env, write_spec

    run_dir = tmp_path / "bench-small_cnn-n1g1"
    tiny = {"batch_sizes": [4], "methods": ["standard"], "repeats": 1, "warmup": 0}
    spec_path, _ = write_spec(run_dir, kind="bench", shape={"nodes": 1, "gpus_per_node": 1},
                              data_root=str(tmp_path / "no-data"), eval={"steps": 1}, bench=tiny)  # fmt: skip
    subprocess.run([sys.executable, "-m", "workloads.entry", str(spec_path)], env=clean_env(), cwd=ROOT,
                   check=True, capture_output=True)  # fmt: skip
    env = json.loads((run_dir / "env.json").read_text())
    assert env["malloc"] == {"mmap_threshold": 32 * 2**20, "trim_threshold": 2**30}
