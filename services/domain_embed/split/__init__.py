"""The split subpackage."""
