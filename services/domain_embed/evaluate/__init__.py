"""The evaluate subpackage."""
