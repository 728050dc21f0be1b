"""Complete mode's request body: where the flow inputs go."""

from __future__ import annotations

import pytest

from flowhost.exceptions import InvalidInput
from flowhost.wire.complete.models import refuse_top_level_inputs


def test_a_flow_input_at_the_top_level_is_refused_and_named() -> None:
    with pytest.raises(InvalidInput) as info:
        refuse_top_level_inputs({"question": "q"}, ["question", "chat_history"])
    assert info.value.field == "inputs"
    assert '{"inputs": {"question": ...}}' in info.value.message


def test_bodies_with_inputs_or_only_body_fields_pass() -> None:
    refuse_top_level_inputs({"inputs": {}, "question": "q"}, ["question"])  # inputs given
    refuse_top_level_inputs({"stream": False}, ["stream", "question"])  # a body field
    refuse_top_level_inputs({"other": 1}, ["question"])  # not a flow input: ignored
