"""Test helpers: a scripted, Anthropic-compatible model server (no network, no key)."""
