"""Packaging for a cluster: pyproject.toml declares compatible ranges (a cluster's own torch build is kept), and
constraints.txt pins the exact versions of this repository's set-up and CI (scripts/setup.sh installs with -c)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
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
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--no-index",
        "--no-build-isolation",
        "--quiet",
        "--disable-pip-version-check",
        "--report",
        "-",
        str(REPO),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    installs = [item["metadata"]["name"] for item in json.loads(out.stdout)["install"]]
    assert installs == ["fastrobust"], installs


@pytest.mark.slow  # over ~1.5 s on 2 cores: left out of the quick lane
def test_an_installed_wheel_finds_its_shipped_profiles_and_fastrobust_profiles_first(tmp_path: Path) -> None:
    """Outside any checkout: build the wheel, install it into a folder, and look profiles up from a cwd that is
    not the repository, with the checkout off sys.path (-I, and -S so the editable install's finder is not
    loaded): the shipped profiles load from the installed package data, and FASTROBUST_PROFILES wins."""
    source = tmp_path / "source"  # a copy: building in the checkout would write build/ and *.egg-info there
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("orchestrator", "workloads", "slurm_templates"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    wheels, target = tmp_path / "wheels", tmp_path / "installed"
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("fastrobust-*.whl")
    install = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300
    )
    assert install.returncode == 0, install.stderr[-2000:]
    site = tmp_path / "site"
    site.mkdir()
    (site / "generic.yaml").write_text("partition: site-gpu\n")
    (site / "only-here.yaml").write_text("gpu_request: gres\n")
    code = (
        "import json, sys\n"
        f"sys.path[:0] = [{str(target)!r}, {sysconfig.get_paths()['purelib']!r}]\n"
        "from orchestrator.grid import profiles\n"
        "print(json.dumps({'module': profiles.__file__, 'shipped': str(profiles.shipped_dir()),\n"
        "    'generic': [str(profiles.find_profile('generic')), profiles.load_profile('generic').partition],\n"
        "    'local': profiles.load_profile('local-cluster').name, 'names': profiles.available_profiles()}))\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def lookup(**env: str) -> dict[str, object]:
        out = subprocess.run(
            [sys.executable, "-I", "-S", "-c", code],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": os.environ["PATH"], **env},
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    shipped = lookup()
    assert str(shipped["module"]).startswith(str(target)) and shipped["shipped"] == str(target / "slurm_templates")
    assert shipped["generic"] == [str(target / "slurm_templates" / "generic.yaml"), None]
    assert shipped["local"] == "local-cluster" and {"generic", "local-cluster", "supercloud"} <= set(shipped["names"])
    sited = lookup(FASTROBUST_PROFILES=os.pathsep.join([str(tmp_path / "absent"), str(site)]))
    assert sited["generic"] == [str(site / "generic.yaml"), "site-gpu"]  # the site's folder is searched first
    assert "only-here" in sited["names"]
