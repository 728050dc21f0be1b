"""A process embedding with the packaged model for ``LocalEmbedder.embed_documents``.

``python -m flowhost.knowledge.embed_worker``: loads the model (BLAS single-threaded), writes
``R`` when ready, then answers requests one at a time on its stdin/stdout until stdin closes.
A request is a 4-byte big-endian length and a JSON list of texts; an answer is ``0`` with the
4-byte length and the float32 rows (512 per text), or ``1`` with the length and an error text.
Anything else the process prints goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys

__all__ = ["main"]


def main() -> None:
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints must not mix with answers
    sys.stdout = sys.stderr
    from flowhost.knowledge.embedding import _shared_model, blas_threads, normalize_rows

    blas_threads(1)  # one process per CPU (OPENBLAS_NUM_THREADS=1 too)
    model = _shared_model()
    protocol.write(b"R")
    protocol.flush()
    requests = sys.stdin.buffer
    while True:
        head = requests.read(4)
        if len(head) < 4:
            return
        body = requests.read(int.from_bytes(head, "big"))
        try:
            payload = normalize_rows(model.encode(json.loads(body))).tobytes()
            status = b"0"
        except Exception as exc:
            payload = f"{type(exc).__name__}: {exc}".encode()
            status = b"1"
        protocol.write(status + len(payload).to_bytes(4, "big") + payload)
        protocol.flush()


if __name__ == "__main__":
    main()
