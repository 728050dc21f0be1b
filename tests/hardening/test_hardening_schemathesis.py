"""schemathesis over /openapi.json against a real ``flowhost serve``: no 5xx, and every
response matches its documented schema (status, content type, headers, body).

The server serves copies of examples/flows/echo, branch and chat (chat on the fake LLM), not the
whole examples folder: the rag app builds its knowledge bases at start, which only slows this
down. The knowledge, memory, history and trace routes are served all the same.

Bounded: ``MAX_EXAMPLES`` generated cases per operation (~40 operations), no shrinking.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)

from flowhost.testing import FakeLLM

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "flows"
MAX_EXAMPLES = 15
MAX_INT64 = 2**63 - 1
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    content_type_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def st_server(
    module_server_factory: Callable[..., Any],
    fake_llm: FakeLLM,
    tmp_path_factory: pytest.TempPathFactory,
) -> Any:
    flows = tmp_path_factory.mktemp("st_flows")
    for name in ("echo", "branch", "chat"):
        shutil.copytree(EXAMPLES / name, flows / name)
    env = {
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": fake_llm.base_url,
        "OPENAI_MODEL": "fake-chat",
        "FLOWHOST_LLM_MAX_RETRIES": "0",
    }
    return module_server_factory(flows, "--default-app", "echo", token="secret", env=env)


@pytest.fixture(scope="module")
def http(st_server: Any) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers["Authorization"] = "Bearer secret"
        yield session


@pytest.fixture(scope="module")
def api_schema(st_server: Any) -> Any:
    return schemathesis.openapi.from_url(f"{st_server.url}/openapi.json")


def _fix_known_bugs(case: Any) -> list[Any]:
    """The checks to run on one case."""
    return CHECKS


def test_api_conforms_to_its_schema(
    api_schema: Any, http: requests.Session, st_server: Any
) -> None:
    """Every operation, valid and invalid generated requests (schemathesis' pytest plugin does
    not load under pytest 9, so the cases are drawn with hypothesis directly)."""
    failures: dict[str, str] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 30
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                checks = _fix_known_bugs(case)
                case.call_and_validate(
                    base_url=st_server.url, session=http, checks=checks, timeout=30
                )

            try:
                run()
            except Unsatisfiable:  # no invalid request exists (e.g. no parameters at all)
                continue
            except Exception as exc:  # one report per operation and mode, then go on
                failures[f"{operation.label} [{mode.value}]"] = str(exc)[:3000]
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/traces",
        "/api/v1/memories",
        "/api/v1/history/sessions",
        "/api/v1/knowledge/bases/x/documents",
    ],
)
def test_a_huge_offset_is_a_bad_request(http: requests.Session, st_server: Any, path: str) -> None:
    r = http.get(f"{st_server.url}{path}", params={"offset": str(MAX_INT64 + 1)}, timeout=30)
    assert r.status_code == 400, r.text
