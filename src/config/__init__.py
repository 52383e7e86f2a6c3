"""Typed run configuration: the schema and the YAML/flag loader that validates it."""
