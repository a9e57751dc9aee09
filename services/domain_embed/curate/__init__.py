"""The curate subpackage."""
