"""StopMatcher: stop strings split across deltas, overlapping prefixes, unicode, pass-through."""

from __future__ import annotations

import random

import pytest

from rocmforge_core.stops import StopMatcher


def run(stops, deltas):
    """Feed every delta; return (all shown text, stopped, number of deltas consumed when it stopped)."""
    m = StopMatcher(stops)
    shown = []
    for i, d in enumerate(deltas):
        out, stopped = m.feed(d)
        shown.append(out)
        if stopped:
            return "".join(shown), True, i + 1, m
    shown.append(m.flush())
    return "".join(shown), False, len(deltas), m


def test_no_stops_is_pass_through():
    m = StopMatcher([])
    assert m.feed("hello ") == ("hello ", False)
    assert m.feed("<|im_end|>") == ("<|im_end|>", False)
    assert m.flush() == ""


def test_empty_stop_string_is_ignored():
    assert run([""], ["abc"])[:2] == ("abc", False)


def test_stop_inside_one_delta():
    assert run(["STOP"], ["hello STOP world"])[:2] == ("hello ", True)


def test_stop_split_across_many_deltas():
    text, stopped, used, m = run(["<|im_end|>"], ["Hi", " there", "<", "|", "im", "_e", "nd", "|>", "more"])
    assert (text, stopped, used, m.matched) == ("Hi there", True, 8, "<|im_end|>")


def test_held_text_is_not_shown_until_it_cannot_be_a_stop():
    m = StopMatcher(["</s>"])
    assert m.feed("a</") == ("a", False)  # "</" may become "</s>"
    assert m.feed("b") == ("</b", False)  # it did not
    assert m.feed("<") == ("", False)
    assert m.flush() == "<"  # the stream ended: release the held text


def test_false_start_then_real_stop():
    # "ab" is held, "a" breaks it, but the second "a" starts the real stop.
    assert run(["abc"], ["xab", "ab", "c", "tail"])[:2] == ("xab", True)
    assert run(["aab"], ["a", "a", "a", "b"])[:2] == ("a", True)


def test_overlapping_prefixes_shorter_completes_first():
    text, stopped, used, m = run(["abc", "ab"], ["x", "a", "b", "c"])
    assert (text, stopped, used, m.matched) == ("x", True, 3, "ab")


def test_overlapping_prefixes_longest_hold_wins():
    # After "ab" the text could still become "abd"; then "c" completes "bc", which starts one earlier.
    m = StopMatcher(["abd", "bc"])
    assert m.feed("ab") == ("", False)
    assert m.feed("c") == ("a", True)
    assert m.matched == "bc"


def test_earliest_stop_wins():
    text, stopped, _, m = run(["world", "lo"], ["hello world"])
    assert (text, m.matched) == ("hel", "lo")


def test_after_stop_everything_is_swallowed():
    m = StopMatcher(["."])
    assert m.feed("one. two") == ("one", True)
    assert m.feed("three") == ("", True)
    assert m.flush() == ""
    assert m.stopped


def test_unicode_stop_strings():
    assert run(["終わり"], ["日本語の", "終", "わ", "り", "です"])[:2] == ("日本語の", True)
    assert run(["👍🏽"], ["ok ", "👍", "🏽", "!"])[:2] == ("ok ", True)
    assert run(["👍🏽"], ["ok ", "👍", "!"])[:2] == ("ok 👍!", False)
    assert run(["é"], ["caf", "e\u0301"])[:2] == ("cafe\u0301", False)  # a different code point


@pytest.mark.parametrize("seed", range(30))
def test_random_splits_agree_with_whole_text(seed):
    rnd = random.Random(seed)
    alphabet = "ab<|>é "
    stops = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 4))) for _ in range(rnd.randint(0, 3))]
    text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40)))
    cuts = sorted(rnd.sample(range(len(text) + 1), k=min(len(text) + 1, rnd.randint(0, 12))))
    deltas = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
    hits = [text.find(s) for s in stops if s and text.find(s) >= 0]
    expected = text[: min(hits)] if hits else text
    shown, stopped, _, _ = run(stops, deltas)
    assert (shown, stopped) == (expected, bool(hits)), (stops, deltas)
