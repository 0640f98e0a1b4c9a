"""The Textual TUI: `mtpchat` with no subcommand. `app.py` is the entry; each other module is one
part of the screen or one job (streaming, connection, settings), named for what it holds."""
