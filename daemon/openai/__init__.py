"""An OpenAI-compatible HTTP API for mtpchatd, built as a client of its wire protocol."""
