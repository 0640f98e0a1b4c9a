"""The layers import one way: the torch-free client is the ground floor, the daemon stands on it.

Read from the source (every `import` and `from … import`, also inside functions), so a lazy import
cannot hide a wrong direction: `mtpchat/` never imports `daemon/`; within `daemon/` the network
knows nothing above it, the engine nothing of serving, files or tools; the daemon reads only the
client's shared ground (protocol, paths, config, CURVE keys; the tools also its client).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package (a folder under the repo root) -> the top-level modules it may import from this repo
ALLOWED = {
    "mtpchat": {"mtpchat"},
    "daemon/model": {"daemon.model"},
    "daemon/engine": {"daemon.model", "daemon.engine", "mtpchat.protocol"},
    "daemon/weights": {"daemon.model", "daemon.weights", "daemon.tiny", "mtpchat.config", "mtpchat.paths",
                       "mtpchat.protocol"},  # the one validator of sampling values, for generation_config.json
    "daemon/tiny": {"daemon.tiny"},
    "daemon/serve": {"daemon.model", "daemon.engine", "daemon.weights", "daemon.serve", "mtpchat.config",
                     "mtpchat.paths", "mtpchat.protocol", "mtpchat.curve", "mtpchat"},
    "daemon/tools": {"daemon", "mtpchat.config", "mtpchat.paths", "mtpchat.protocol", "mtpchat.client",
                     "mtpchat.machine"},
    "daemon/openai": {"daemon.openai", "mtpchat.config", "mtpchat.protocol", "mtpchat.curve"},  # a wire client
}
OURS = ("mtpchat", "daemon")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return {name for name in names if name.split(".")[0] in OURS}


def _allowed(name: str, allowed: set[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in allowed) or name in allowed


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_run_one_way(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package} holds no Python files"
    wrong = [f"{path.relative_to(ROOT)} imports {name}" for path in files for name in sorted(_imports(path))
             if not _allowed(name, ALLOWED[package])]
    assert not wrong, "\n".join(wrong)


def test_every_daemon_module_lives_in_a_layer():
    loose = [p.name for p in (ROOT / "daemon").glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert not loose, f"modules outside daemon/'s folders: {loose}"
