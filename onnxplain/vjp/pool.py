"""pool rules."""
