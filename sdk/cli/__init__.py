"""Command-line entry points of the SDK."""
