"""Theme files: TOML maps of Textual's Theme fields, from the package (`mtpchat.themes`, the
repository's top-level themes/ folder) and from `themes/` in the config dir (a user's theme of the same
name wins). Found through importlib.resources, so an installed wheel has them as a checkout does."""

from __future__ import annotations

from importlib.resources import files

import tomllib
from textual.theme import Theme

from mtpchat.paths import config_dir


def theme_files() -> list:
    """The packaged theme files, then the user's, each group sorted by name."""
    packaged = sorted((f for f in files("mtpchat.themes").iterdir() if f.name.endswith(".toml")), key=lambda f: f.name)
    user_dir = config_dir() / "themes"
    return packaged + (sorted(user_dir.glob("*.toml")) if user_dir.is_dir() else [])


def load_themes() -> tuple[list[Theme], list[str]]:
    """Every theme, and one error line per bad file."""
    themes: dict[str, Theme] = {}
    errors = []
    for path in theme_files():
        try:
            theme = Theme(**tomllib.loads(path.read_text()))
            theme.to_color_system()  # parses every colour: a typo is reported here, not at render
        except Exception as exc:  # noqa: BLE001 - TOML, unknown field or colour errors alike
            errors.append(f"theme {path}: {exc}")
            continue
        themes[theme.name] = theme
    return list(themes.values()), errors
