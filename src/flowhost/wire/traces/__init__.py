"""The trace API: list the runs' traces and read one trace as a tree of spans."""
