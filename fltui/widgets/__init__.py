"""The dashboard's panes and bars."""
