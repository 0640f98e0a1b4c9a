"""mtpchat's client side: command line, TUI, conversation store, daemon client, wire protocol.

Imports nothing heavier than textual, pyzmq, msgpack and platformdirs at module level, so a laptop
without torch can run it; inference lives in the `daemon` package.
"""

__version__ = "0.1.0"
