"""What the server imports to start: not the libraries only some flows or routes need.

Cold start to the first 200 is a target (issue 8: <= 1 s); imports are most of it. Jinja2 comes
with the first prompt template, the LLM client with the first LLM node, the vector stores,
document parsers and embedding model with the first knowledge-base call, Alembic with a schema
that needs migrating.
"""

from __future__ import annotations

import json
import subprocess
import sys

LAZY = (
    "alembic",
    "docx",
    "jinja2",
    "lancedb",
    "numpy",
    "onnxruntime",
    "openai",
    "openpyxl",
    "pyarrow",
    "pymilvus",
    "pypdf",
    "redis",
)


def test_the_server_modules_leave_optional_libraries_unimported() -> None:
    code = (
        "import json, sys\n"
        "import flowhost.cli, flowhost.server.app, flowhost.server.run\n"
        f"print(json.dumps(sorted(m for m in {list(LAZY)!r} if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []
