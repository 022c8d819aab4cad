"""host.server.jsonin: the bounds of the one JSON reader for network input."""

from __future__ import annotations

import json

import pytest

from host.server import jsonin


def test_depth_skips_brackets_inside_strings() -> None:
    assert jsonin.depth('{"a": "[[[{{{", "b": [1, {"c": "\\"]]"}]}') == 3
    assert jsonin.loads('{"a": "' + "[" * 100 + '"}') == {"a": "[" * 100}


@pytest.mark.parametrize("levels", [jsonin.MAX_DEPTH + 1, 5000, 200_000])
def test_too_deep_is_refused_without_recursion(levels: int) -> None:
    with pytest.raises(jsonin.JsonRejected, match=f"deeper than {jsonin.MAX_DEPTH} levels"):
        jsonin.loads("[" * levels + "]" * levels)


def test_exactly_max_depth_parses() -> None:
    n = jsonin.MAX_DEPTH
    assert jsonin.loads("[" * n + "]" * n) is not None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"k": 1, "k": 2}', "the key 'k' appears twice"),
        ("[NaN]", "NaN is not a JSON number"),
        ("[-Infinity]", "-Infinity is not a JSON number"),
        ("1" * 5000, "more than 4300 digits"),
        (b'{"a": "\xff"}', "not UTF-8"),
    ],
)
def test_refusals_say_what_to_fix(text: str | bytes, why: str) -> None:
    with pytest.raises(jsonin.JsonRejected, match=why):
        jsonin.loads(text)


def test_a_syntax_error_keeps_its_position() -> None:
    with pytest.raises(json.JSONDecodeError) as e:
        jsonin.loads('{\n "a": }')
    assert e.value.lineno == 2


def test_decoder_applies_the_same_rules() -> None:
    with pytest.raises(jsonin.JsonRejected):
        jsonin.decoder().raw_decode('[{"a": 1, "a": 1}]')
