"""The daemon: the ZeroMQ serving loop, the model registry, placement across devices.

Stands on `daemon.engine`, `daemon.model` and `daemon.weights`, and on `mtpchat`'s protocol, paths and
config (the wire and the settings both sides share).
"""
