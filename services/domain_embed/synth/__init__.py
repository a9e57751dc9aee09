"""The synth subpackage."""
