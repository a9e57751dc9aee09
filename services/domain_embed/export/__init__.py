"""The export subpackage."""
