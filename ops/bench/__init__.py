"""The benchmark harness: `python -m ops.bench` starts the stack on loopback and measures ingest."""
