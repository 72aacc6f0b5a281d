"""flserverd."""
