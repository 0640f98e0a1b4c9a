"""Decoding: sampling, the MTP drafter, the speculative step, generation, the conversation state cache.

Stands on `daemon.model`; knows nothing of sockets, config files or where weights came from.
"""
