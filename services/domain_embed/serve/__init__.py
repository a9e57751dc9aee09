"""The serve subpackage."""
