"""geoseg's command line: one module per command, each a thin wrapper around one library call."""
