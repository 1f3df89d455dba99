"""
The dependency floors of pyproject.toml, as pip constraints.

    python .ci/floors.py pyproject.toml          print "name==floor" for every
                                                 requirement (runtime and every extra)
    python .ci/floors.py --check pyproject.toml  check that the installed versions
                                                 are exactly those floors
    python .ci/floors.py --extras pyproject.toml every extra, comma-separated (what
                                                 `make test` installs: ".[test,bench]")

Every requirement must have a ``>=`` floor: a requirement without one has no
lowest version to test, and is reported as an error. `make test-floors`
installs the project with these constraints and runs the suite on them.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata

REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*)(;.*)?$")
FLOOR = re.compile(r">=\s*([0-9][^,\s]*)")


def requirements(pyproject: dict) -> list[str]:
    """Every requirement string: the runtime dependencies, then each extra's."""
    project = pyproject["project"]
    found = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        found.extend(extra)
    return found


def floors(pyproject: dict) -> dict[str, str]:
    """``{normalized name: floor}``; raises ValueError naming a requirement without a floor."""
    result = {}
    for text in requirements(pyproject):
        match = REQUIREMENT.match(text)
        if not match:
            raise ValueError(f"cannot read the requirement {text!r}")
        name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
        floor = FLOOR.search(match.group(3))
        if floor is None:
            raise ValueError(f"{text!r} has no '>=' floor: give it the lowest version that passes the suite")
        if name in result and result[name] != floor.group(1):
            raise ValueError(f"{name} has two floors: {result[name]} and {floor.group(1)}")
        result[name] = floor.group(1)
    return result


def same_version(a: str, b: str) -> bool:
    """``25.5`` and ``25.5.0`` are one version."""
    def parts(version):
        items = version.split(".")
        while len(items) > 1 and items[-1] == "0":
            items.pop()
        return items

    return parts(a) == parts(b)


def check(wanted: dict[str, str]) -> list[str]:
    """The installed versions that are not their floor, one line each."""
    problems = []
    for name, floor in sorted(wanted.items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}: not installed (floor {floor})")
            continue
        print(f"  {name:24} {installed}")
        if not same_version(installed, floor):
            problems.append(f"{name}: {installed} installed, floor {floor}")
    return problems


def main(argv: list[str]) -> int:
    """Print the constraints, or with ``--check`` compare them with what is installed."""
    mode = argv[0] if argv[:1] in (["--check"], ["--extras"]) else None
    paths = argv[1:] if mode else argv
    with open(paths[0] if paths else "pyproject.toml", "rb") as handle:
        pyproject = tomllib.load(handle)
    if mode == "--extras":
        print(",".join(pyproject["project"].get("optional-dependencies", {})))
        return 0
    checking = mode == "--check"
    try:
        wanted = floors(pyproject)
    except ValueError as error:
        print(f"floors: {error}", file=sys.stderr)
        return 2
    if not checking:
        for name, floor in sorted(wanted.items()):
            print(f"{name}=={floor}")
        return 0
    print("installed at the floors:")
    problems = check(wanted)
    for problem in problems:
        print(f"floors: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
