"""Offline training on whole utterances (the decoder never sees simultaneous training)."""
