"""Shared library of the Whisper fine-tuning toolkit: one module per concern."""
