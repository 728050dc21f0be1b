"""The knowledge-base HTTP API (``/api/v1/knowledge``)."""
