"""The layers import one way: the torch-free client is the ground floor, the daemon stands on it.

Read from the source (every `import` and `from … import`, also inside functions), so a lazy import
cannot hide a wrong direction: `mtpchat/` never imports `daemon/`; within `daemon/` the network
knows nothing above it, the engine nothing of serving, files or tools; the daemon reads only the
client's shared ground (protocol, paths, config, CURVE keys, its version; the tools also its client).
An allowed name covers what lies inside it, so each names exactly what a layer needs: `from mtpchat
import __version__` reads as `mtpchat.__version__`, allowed to the server, while `from mtpchat import
client` reads as `mtpchat.client`, which it is not. Relative imports are refused: they would hide the
module they name.
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
                     "mtpchat.protocol", "mtpchat.curve", "mtpchat.__version__"},  # the version: `status`
    "daemon/tools": {"daemon", "mtpchat.config", "mtpchat.paths", "mtpchat.protocol", "mtpchat.client",
                     "mtpchat.machine"},
    "daemon/openai": {"daemon.openai", "mtpchat.config", "mtpchat.protocol", "mtpchat.curve"},  # a wire client
}
OURS = ("mtpchat", "daemon")


def _imports(path: Path) -> set[str]:
    """The dotted names a file imports from this repo: `import a.b` is a.b, `from a import b` a.b."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            names.update(f"{module}.{alias.name}" if node.level == 0 else module for alias in node.names)
    return {name for name in names if name.startswith(".") or name.split(".")[0] in OURS}


def _allowed(name: str, allowed: set[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in allowed)


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


def test_an_allowed_name_covers_only_what_lies_inside_it(tmp_path):
    """The checker itself: the server's `from mtpchat import __version__` passes, the client's other
    modules imported the same way do not, and a relative import is never allowed."""
    source = tmp_path / "server.py"
    source.write_text("from mtpchat import __version__, client\nfrom mtpchat.protocol import pack\n"
                      "def later():\n    from .. import machine\n")
    names = _imports(source)
    assert names == {"mtpchat.__version__", "mtpchat.client", "mtpchat.protocol.pack", ".."}
    assert [name for name in sorted(names) if not _allowed(name, ALLOWED["daemon/serve"])] == [
        "..", "mtpchat.client"]
