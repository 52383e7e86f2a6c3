"""Datasets, persisted splits and transforms (``src.data.build.build_datasets`` is the entry point).

Nothing is imported here on purpose: a DataLoader worker started with ``spawn`` imports only the
modules of the objects it unpickles (datasets, feed, readers), not the split or model code.
"""
