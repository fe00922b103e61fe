"""Per-area callback settings; see tests/callbacks/callback_settings.py."""
