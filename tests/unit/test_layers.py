"""
The import rule, read from the source: ``wire`` ← ``core`` ← {``brokers``,
``transports``, ``web``} ← ``options`` ← ``site`` ← ``daemon`` (and the plugin);
``sockets`` (what they ask of a socket beneath Twisted) sits beside ``wire``
and ``core``, below the three that do I/O, and imports nothing of relayd.

A module may import its own layer and the layers below it, never beside or
above; the core never imports twisted.web, Autobahn or txredisapi. The rule
is checked on every ``import`` in every module, function-level ones included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "relayd"

#: What each layer may import from relayd (besides itself).
ALLOWED = {
    "wire": set(),
    "core": {"wire"},
    "sockets": set(),
    "brokers": {"wire", "core", "sockets"},
    "transports": {"wire", "core", "sockets"},
    "web": {"wire", "core", "sockets"},
    "options": {"wire", "core"},
    "site": {"wire", "core", "sockets", "brokers", "transports", "web", "options"},
    "daemon": {"wire", "core", "sockets", "brokers", "transports", "web", "options", "site"},
    "bench": {"wire", "core", "sockets", "brokers", "transports", "web", "options", "site", "daemon"},
    "main": {"daemon"},
    "version": set(),
}

#: Third-party packages a layer must not import.
FORBIDDEN_OUTSIDE = {
    "wire": ("twisted", "autobahn", "txredisapi", "prometheus_client"),
    "sockets": ("twisted.web", "autobahn", "txredisapi", "prometheus_client"),
    "core": ("twisted.web", "autobahn", "txredisapi", "prometheus_client"),
    "brokers": ("twisted.web", "autobahn"),
    "transports": ("txredisapi",),
    "web": ("autobahn", "txredisapi"),
}


def layer_of(module: str) -> str:
    """The layer of a dotted ``relayd.…`` module name."""
    parts = module.split(".")
    if len(parts) == 1:
        return "version"
    return {"__main__": "main", "__init__": "version"}.get(parts[1], parts[1])


def module_name(path: Path) -> str:
    """``relayd/core/relay.py`` → ``relayd.core.relay``."""
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] if len(parts) > 1 else parts
    return ".".join(parts)


def imports_of(path: Path, source: str) -> list[str]:
    """Every module that ``source`` (the text of ``path``) imports, as absolute dotted names."""
    names = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module_name(path).split(".")[: -node.level]
                names.append(".".join(base + ([node.module] if node.module else [])))
            elif node.module == "relayd":
                names.extend("relayd" if alias.name.startswith("__") else f"relayd.{alias.name}" for alias in node.names)
            else:
                names.append(node.module or "")
    return names


def violations(path: Path, source: str | None = None) -> list[str]:
    """The imports of ``path`` (or of ``source`` put there) that break the rule, described."""
    own = layer_of(module_name(path))
    found = []
    for name in imports_of(path, path.read_text() if source is None else source):
        if name == "relayd" or name.startswith("relayd."):
            other = layer_of(name)
            if other != own and other != "version" and other not in ALLOWED[own]:
                found.append(f"{own} imports {name} ({other})")
        for banned in FORBIDDEN_OUTSIDE.get(own, ()):
            if name == banned or name.startswith(banned + "."):
                found.append(f"{own} imports {name}")
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_module_imports_only_its_own_layer_and_below(path):
    """Every module keeps the import direction."""
    assert violations(path) == []


def test_every_module_belongs_to_a_known_layer():
    """A new top-level module or package must be given its place in the rule."""
    assert {layer_of(module_name(p)) for p in MODULES} <= set(ALLOWED)


def test_the_rule_catches_imports_that_run_the_wrong_way():
    """The checker itself: a core module importing a transport or twisted.web, web importing a transport."""
    core = PACKAGE / "core" / "probe.py"
    source = "from relayd.transports import websocket\nimport twisted.web.server\nfrom relayd.wire import dumps\n"
    assert violations(core, source) == ["core imports relayd.transports (transports)", "core imports twisted.web.server"]
    web = PACKAGE / "web" / "probe.py"
    assert violations(web, "def f():\n    from relayd.transports.sse import SSEStreams\n") == [
        "web imports relayd.transports.sse (transports)"
    ]
    assert violations(web, "from .http import JsonResource\nfrom ..core import auth\n") == []
