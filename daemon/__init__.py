"""mtpchat's inference side: checkpoint loading, our own model forward, caches and decoding.

Everything here may import torch; nothing in `mtpchat/` (the client side) imports this package at
module level, so the client runs where torch is absent.
"""
