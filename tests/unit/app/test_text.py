"""app.text: which characters are refused, and escaping for terminals."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.text import describe_unsafe, find_unsafe, printable


def test_refused_and_allowed_characters():
    for char in (
        "\x00",
        "\x1b",
        "\x7f",
        "\x85",
        "\x9b",
        "\u202e",
        "\u2066",
        "\u200f",
        "\u2028",
        "\ud800",
    ):
        assert find_unsafe(f"a{char}b") == char
        assert find_unsafe(f"a{char}b", multiline=True) == char
    for char in ("\t", "\n", "\r"):
        assert find_unsafe(f"a{char}b") == char
        assert find_unsafe(f"a{char}b", multiline=True) is None
    for text in ("mnist", "ünïcode ✓", "日本語", "emoji 🙂", "a-b_c.d"):
        assert find_unsafe(text) is None
    assert describe_unsafe("\x1b") == "U+001B" and describe_unsafe("\u202e") == "U+202E"


@given(st.text())
def test_printable_leaves_nothing_to_interpret(text):
    shown = printable(text)
    assert find_unsafe(shown) is None
    if find_unsafe(text) is None:
        assert shown == text  # safe text is shown as it is
