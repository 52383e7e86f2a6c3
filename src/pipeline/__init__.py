"""The TAKD pipeline: stages, run directory, reports and the shared command line."""
