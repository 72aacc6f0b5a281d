"""flstack's side of the peer comparison: it runs from the repository's own .venv."""
