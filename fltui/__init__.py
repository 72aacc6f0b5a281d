"""fltui."""
