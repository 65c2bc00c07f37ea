"""reduce rules."""
