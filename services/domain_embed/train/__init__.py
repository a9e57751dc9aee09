"""The train subpackage."""
