"""Incremental UTF-8 assembly and stop strings (pure functions)."""

from kubellama_server.engine.text import TextAssembler, find_partial_stop


def test_partial_stop_detection():
    assert find_partial_stop("hello wor", ["world"]) == 6
    assert find_partial_stop("hello", ["world"]) == -1
    assert find_partial_stop("ab", ["b", "bc"]) == 1


def test_stop_string_split_across_tokens_is_held_back_and_excluded():
    a = TextAssembler(["END"])
    sent = []
    for piece in [b"one E", b"N", b"D two"]:
        hit = a.push(piece)
        sent.append(a.take_sendable())
        if hit:
            break
    assert hit and a.stopping_word == "END"
    assert "".join(sent) == "one " and a.text == "one "


def test_false_alarm_is_released():
    a = TextAssembler(["END"])
    a.push(b"x E")
    assert a.take_sendable() == "x "
    a.push(b"Nx")
    assert a.take_sendable() == "ENx"


def test_multibyte_character_split_across_tokens():
    a = TextAssembler([])
    euro = "€".encode()
    a.push(euro[:1])
    assert a.take_sendable() == "" and a.pending_bytes
    a.push(euro[1:2])
    assert a.take_sendable() == ""
    a.push(euro[2:])
    assert a.take_sendable() == "€"


def test_invalid_bytes_are_replaced_not_raised():
    a = TextAssembler([])
    a.push(b"\xff\xfe ok")
    a.push(b"\xe2\x82")  # dangling start of a character at the end
    a.flush()
    assert a.take_sendable(final=True) == "\ufffd\ufffd ok\ufffd"
