"""The package declares what it needs: pyproject.toml's dependencies and requirements.txt's pins name the same
packages, so `pip install -e .` in an environment with torch gives a working `nextpoi run`, `nextpoi batch` and
papermill kernel, and the exact pins cannot drift away from the declared ranges."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_name(requirement: str) -> str:
    """The normalised project name of a requirement line ("scikit-learn==1.7.2" -> "scikit-learn")."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(path: Path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {package_name(line): line for line in lines if line}


def declared() -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {extra: {package_name(r): r for r in requirements}
              for extra, requirements in project.get("optional-dependencies", {}).items()}
    return {package_name(r): r for r in project["dependencies"]}, extras


def test_package_name_normalises():
    assert package_name("scikit-learn==1.7.2") == "scikit-learn"
    assert package_name("ray[default]>=2.9") == "ray"
    assert package_name("torch_geometric>=2.5") == "torch-geometric"


def test_every_pin_is_declared_and_every_declaration_is_pinned():
    dependencies, extras = declared()
    runtime_pins = pinned(ROOT / "requirements.txt")
    in_an_extra = set().union(*extras.values())
    # torch is installed separately (a CPU build here, the user's CUDA build on a GPU workstation).
    assert set(dependencies) - {"torch"} <= set(runtime_pins), "declared but not pinned in requirements.txt"
    undeclared = set(runtime_pins) - set(dependencies) - in_an_extra
    assert not undeclared, f"pinned in requirements.txt but not declared in pyproject.toml: {sorted(undeclared)}"


def test_the_kernel_and_notebook_runners_are_declared():
    dependencies, _ = declared()
    assert {"ipykernel", "papermill", "nbformat", "nbclient"} <= set(dependencies)


def test_pins_satisfy_the_declared_ranges():
    from packaging.requirements import Requirement

    dependencies, extras = declared()
    everything = {**dependencies, **{name: r for extra in extras.values() for name, r in extra.items()}}
    pins = {**pinned(ROOT / "requirements.txt"), **pinned(ROOT / "requirements-test.txt")}
    for name, line in pins.items():
        if name in everything and "==" in line:
            version = line.split("==", 1)[1].strip()
            assert Requirement(everything[name]).specifier.contains(version, prereleases=True), (name, version)


def test_environment_file_uses_the_same_pins():
    text = (ROOT / "environment.yml").read_text()
    assert "-r requirements.txt" in text and "-r requirements-test.txt" in text
