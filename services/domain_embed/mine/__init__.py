"""The mine subpackage."""
