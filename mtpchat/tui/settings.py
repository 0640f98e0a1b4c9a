"""The TUI's part of config.toml: the theme (saved when the user picks one) and key overrides.

    theme = "mtpchat-light"
    [keys]                     # binding id = keys, comma-separated; ids are listed on the F1 screen
    switch_model = "ctrl+o"
    new_conversation = "ctrl+n,f2"

Saving the theme rewrites only the top-level `theme = …` line, so the user's comments and model
tables stay as they wrote them. Theme files are TOML maps of Textual's Theme fields, from `themes/`
in this repository and from `themes/` in the config dir (a user's theme of the same name wins).
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from textual.theme import Theme

from mtpchat.paths import config_dir

DEFAULT_THEME = "mtpchat-dark"
BUILTIN_THEMES_DIR = Path(__file__).resolve().parents[2] / "themes"
_THEME_LINE = re.compile(r"^theme\s*=.*$", re.MULTILINE)
_TABLE = re.compile(r"^\s*\[", re.MULTILINE)


@dataclass(frozen=True)
class TuiSettings:
    theme: str = DEFAULT_THEME
    keys: dict[str, str] = field(default_factory=dict)


def config_path() -> Path:
    return config_dir() / "config.toml"


def load_settings() -> TuiSettings:
    path = config_path()
    if not path.exists():
        return TuiSettings()
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: {exc}") from None
    theme, keys = raw.get("theme", DEFAULT_THEME), raw.get("keys", {})
    if not isinstance(theme, str):
        raise ValueError(f"{path}: theme must be a string, got {theme!r}")
    if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
        raise ValueError(f'{path}: [keys] maps binding ids to key strings, e.g. switch_model = "ctrl+o"')
    return TuiSettings(theme, dict(keys))


def save_theme(name: str) -> None:
    path = config_path()
    text = path.read_text() if path.exists() else ""
    line = f"theme = {json.dumps(name)}"
    first_table = _TABLE.search(text)
    head, tail = (text[:first_table.start()], text[first_table.start():]) if first_table else (text, "")
    if _THEME_LINE.search(head):
        head = _THEME_LINE.sub(line, head, count=1)
    else:
        head = f"{line}\n{head}"
    tomllib.loads(head + tail)  # never write a file the next start cannot read
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + tail)


def load_themes() -> tuple[list[Theme], list[str]]:
    """Themes from the repository's and the user's themes dirs, and one error line per bad file."""
    themes: dict[str, Theme] = {}
    errors = []
    for directory in (BUILTIN_THEMES_DIR, config_dir() / "themes"):
        for path in sorted(directory.glob("*.toml")) if directory.is_dir() else []:
            try:
                fields = tomllib.loads(path.read_text())
                theme = Theme(**fields)
                theme.to_color_system()  # parses every colour: a typo is reported here, not at render
            except Exception as exc:  # noqa: BLE001 - TOML, unknown field or colour errors alike
                errors.append(f"theme {path}: {exc}")
                continue
            themes[theme.name] = theme
    return list(themes.values()), errors
