"""flclientd."""
