"""Packaging for a cluster: pyproject.toml declares compatible ranges (a cluster's own torch build is kept), and
constraints.txt pins the exact versions of this repository's set-up and CI (scripts/setup.sh installs with -c)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
BOUNDED = ("torch", "torchvision", "submitit")  # what a cluster's own builds and submitit_compat pin against


def _project() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def _requirements() -> dict[str, Requirement]:
    project = _project()
    extras = project["optional-dependencies"]
    assert isinstance(extras, dict)
    texts = [*project["dependencies"], *(t for group in extras.values() for t in group)]  # type: ignore[misc]
    return {Requirement(t).name.lower(): Requirement(t) for t in texts}


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: expected NAME==VERSION; got {line!r}"
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_dependencies_are_ranges_with_upper_bounds() -> None:
    reqs = _requirements()
    for name in BOUNDED:
        spec = reqs[name].specifier
        assert not any(s.operator == "==" for s in spec), f"{name} is pinned in pyproject.toml: {spec}"
        assert any(s.operator == "<" for s in spec) and any(s.operator == ">=" for s in spec), f"{name}: {spec}"
    assert reqs["torch"].specifier.contains("2.1.0") and reqs["torch"].specifier.contains("2.5.1")  # other clusters
    assert "tensorboard" in _project()["optional-dependencies"]  # type: ignore[operator]


def test_constraints_pin_what_the_ranges_admit_and_what_is_installed() -> None:
    pins, reqs = _constraints(), _requirements()
    for name, req in reqs.items():
        assert name in pins, f"constraints.txt does not pin {name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req}"
    for name in ("torch", "torchvision", "submitit"):  # scripts/setup.sh must not replace this machine's set-up
        assert metadata.version(name).split("+")[0] == pins[name], name


def test_pip_install_keeps_an_installed_torch_in_range() -> None:
    """What `pip install .` would do here, offline: install the project only; torch, torchvision and every other
    dependency already installed in range are kept (a pin to another version would make pip replace them)."""
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation", "--quiet",
           "--disable-pip-version-check", "--report", "-", str(REPO)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    installs = [item["metadata"]["name"] for item in json.loads(out.stdout)["install"]]
    assert installs == ["fastrobust"], installs
