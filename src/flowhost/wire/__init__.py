"""Wire protocols: each a pure translator from the run-event stream to bytes."""
