"""The 8x8 digits data for the examples (prepare_data.py)."""
