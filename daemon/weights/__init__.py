"""Weights on disk: finding checkpoints, loading them tensor by tensor, GGUF conversion, built-in models.

Stands on `daemon.model`; `heads/` holds the MTP head this project trained for the demo model.
"""
