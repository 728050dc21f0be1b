"""OTLP/HTTP export: a real server sends its spans to a real receiver that the test starts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from tracing_support import EXAMPLES, OTLPReceiver, attribute_values

from flowhost.tracing import otlp_endpoint


def test_spans_are_exported_over_otlp_http(
    server_factory: Callable[..., Any], chat_llm_env: dict[str, str]
) -> None:
    with OTLPReceiver() as receiver:
        env = {
            **chat_llm_env,
            "OPENAI_API_KEY": "sk-EXPORT-SECRET-9",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_SERVICE_NAME": "flowhost-under-test",
        }
        server = server_factory(EXAMPLES, "--trace-content", "off", token="secret", env=env)
        resp = httpx.post(
            f"{server.url}/apps/chat",
            json={"question": "a private question"},
            headers={"Authorization": "Bearer secret"},
        )
        assert resp.status_code == 200, resp.text
        trace_id = bytes.fromhex(resp.headers["X-Trace-Id"])
        deadline = time.monotonic() + 15
        while True:  # poll: the batch processor exports every 50 ms
            ours = [s for s in receiver.spans() if s.trace_id == trace_id]
            if len(ours) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert len(ours) == 2, server.output()

    run = next(s for s in ours if not s.parent_span_id)
    node = next(s for s in ours if s.parent_span_id)
    assert node.parent_span_id == run.span_id
    assert run.name == "chat"
    run_attrs, node_attrs = attribute_values(run), attribute_values(node)
    assert run_attrs["flowhost.app_id"] == "chat"
    assert node_attrs["gen_ai.request.model"] == "fake-chat"
    assert node_attrs["gen_ai.usage.output_tokens"] > 0
    assert node.end_time_unix_nano >= node.start_time_unix_nano > 0
    # --trace-content off: no prompt, completion, input or output left the server
    assert not {"input.value", "output.value", "gen_ai.input.messages"} & set(node_attrs)
    everything = b"".join(receiver.bodies)
    assert b"private question" not in everything
    assert b"sk-EXPORT-SECRET-9" not in everything
    request = ExportTraceServiceRequest()
    request.ParseFromString(receiver.bodies[0])
    resource = {
        kv.key: kv.value.string_value for kv in request.resource_spans[0].resource.attributes
    }
    assert resource["service.name"] == "flowhost-under-test"
    assert receiver.headers[0]["content-type"] == "application/x-protobuf"


def test_the_standard_variables_choose_the_endpoint() -> None:
    assert otlp_endpoint({}) is None
    assert otlp_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == "http://c:4318"
    traces = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/v1/traces"}
    assert otlp_endpoint(traces) == "http://t:4318/v1/traces"
    off = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}
    assert otlp_endpoint(off) is None
