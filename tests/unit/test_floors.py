"""
.ci/floors.py, which `make test-floors` uses: every requirement of
pyproject.toml (runtime and every extra, whoever added it) becomes an exact
``==floor`` constraint, and one without a floor is an error.
"""

from __future__ import annotations

import importlib.util
import tomllib

import pytest

from tests.relayproc import ROOT

spec = importlib.util.spec_from_file_location("floors", ROOT / ".ci" / "floors.py")
floors = importlib.util.module_from_spec(spec)
spec.loader.exec_module(floors)


def project(dependencies, **extras):
    return {"project": {"dependencies": dependencies, "optional-dependencies": extras}}


def test_runtime_and_every_extra_become_exact_constraints():
    pyproject = project(
        ["twisted[tls]>=25.5.0", "orjson>=3.10.0; platform_python_implementation == 'CPython'"],
        test=["pytest>=8.0.0,<10"], bench=["matplotlib>=3.8.0", "aiohttp >= 3.9.5"],
    )
    assert floors.floors(pyproject) == {
        "twisted": "25.5.0", "orjson": "3.10.0", "pytest": "8.0.0", "matplotlib": "3.8.0", "aiohttp": "3.9.5",
    }


@pytest.mark.parametrize("requirement", ["httptools", "httptools<1", "httptools==0.6.4"])
def test_a_requirement_without_a_floor_is_an_error(requirement):
    with pytest.raises(ValueError, match="no '>=' floor"):
        floors.floors(project([requirement]))


def test_two_floors_for_one_package_are_an_error():
    with pytest.raises(ValueError, match="two floors"):
        floors.floors(project(["PyJWT>=2.10.0"], test=["pyjwt>=2.8.0"]))


def test_the_projects_own_floors_are_readable_and_its_extras_listed(capsys):
    with open(ROOT / "pyproject.toml", "rb") as handle:
        pyproject = tomllib.load(handle)
    assert "twisted" in floors.floors(pyproject)
    assert floors.main(["--extras", str(ROOT / "pyproject.toml")]) == 0
    assert "test" in capsys.readouterr().out.strip().split(",")


def test_zero_padding_is_one_version():
    assert floors.same_version("25.5", "25.5.0") and not floors.same_version("25.5", "25.5.1")
