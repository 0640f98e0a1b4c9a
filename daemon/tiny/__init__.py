"""Tiny random checkpoints in the hubs' real on-disk layout, with an offline tokenizer: the test fixtures.

Built in a second, without a download, by the tests and for the built-in model `tiny`; nothing in the
serving path imports this package except `daemon.weights.builtin_models` when `tiny` is asked for.
"""
