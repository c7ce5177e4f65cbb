"""WebSocket framing of the native server (server/native/frames.py): pure, property-tested."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.wsframes import client_frame, read_server_frame
from tidings.server.native.frames import (
    CLOSE_INVALID_DATA,
    CLOSE_NO_STATUS,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Control,
    FrameError,
    FrameParser,
    Message,
    close_frame,
    frame,
    mask_payload,
    parse_close,
    text_frame,
    unmask,
)

MAX_MESSAGE = 10_000


def feed(parser: FrameParser, data: bytes, cuts: list[int]) -> list[Message | Control]:
    """Feed ``data`` cut at ``cuts`` and collect the events."""
    events: list[Message | Control] = []
    previous = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        parser.receive_data(data[previous:cut])
        events.extend(parser.events())
        previous = cut
    return events


messages = st.one_of(
    st.text(max_size=300).map(lambda text: Message(text, None)),
    st.binary(max_size=300).map(lambda data: Message(None, data)),
)


@st.composite
def wire_of(draw: st.DrawFn, items: list[Message]) -> tuple[bytes, list[Message | Control]]:
    """Frame ``items`` as a client might: fragmented anywhere, pings between fragments."""
    wire = b""
    expected: list[Message | Control] = []
    for item in items:
        opcode = OP_TEXT if item.text is not None else OP_BINARY
        payload = item.text.encode() if item.text is not None else (item.data or b"")
        pieces = sorted(set(draw(st.lists(st.integers(0, len(payload)), max_size=3))))
        parts = [payload[a:b] for a, b in zip([0, *pieces], [*pieces, len(payload)], strict=True)]
        for index, part in enumerate(parts):
            mask = draw(st.binary(min_size=4, max_size=4))
            code = opcode if index == 0 else OP_CONTINUATION
            wire += client_frame(code, part, fin=index == len(parts) - 1, mask=mask)
            if index < len(parts) - 1 and draw(st.booleans()):  # between fragments
                ping = draw(st.binary(max_size=125))
                wire += client_frame(OP_PING, ping, mask=mask)
                expected.append(Control(OP_PING, ping))
        expected.append(item)
    return wire, expected


@given(st.lists(messages, max_size=6).flatmap(wire_of), st.lists(st.integers(0, 4000)))
def test_parser_yields_exactly_the_messages_and_controls_however_the_bytes_are_cut(
    framed: tuple[bytes, list[Message | Control]], cuts: list[int]
) -> None:
    wire, expected = framed
    cuts = [cut for cut in cuts if cut <= len(wire)]
    assert feed(FrameParser(MAX_MESSAGE), wire, cuts) == expected


@given(st.binary(max_size=70_000), st.binary(min_size=4, max_size=4))
def test_masking_round_trips(payload: bytes, mask: bytes) -> None:
    assert unmask(mask_payload(payload, mask), mask) == payload


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65_535, 65_536, 70_000])
def test_server_frames_carry_every_length_unmasked(length: int) -> None:
    payload = bytes(range(256)) * (length // 256 + 1)
    assert read_server_frame(frame(OP_BINARY, payload[:length])) == (
        OP_BINARY,
        True,
        payload[:length],
    )


@given(st.text(max_size=200))
def test_a_text_frame_is_the_utf8_of_its_text(text: str) -> None:
    assert read_server_frame(text_frame(text)) == (OP_TEXT, True, text.encode())


@given(st.integers(1000, 4999), st.text(max_size=200))
def test_close_frames_fit_a_control_frame_and_keep_utf8(code: int, reason: str) -> None:
    opcode, fin, payload = read_server_frame(close_frame(code, reason))
    assert (opcode, fin) == (OP_CLOSE, True)
    assert len(payload) <= 125
    assert struct.unpack("!H", payload[:2])[0] == code
    assert reason.startswith(payload[2:].decode())


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (bytes((0x81, 0x01)) + b"x", CLOSE_PROTOCOL_ERROR),  # not masked
        (
            client_frame(OP_TEXT, b"x")[:0] + bytes((0xC1, 0x81)) + b"abcd" + b"x",
            CLOSE_PROTOCOL_ERROR,
        ),
        (client_frame(0x3, b"x"), CLOSE_PROTOCOL_ERROR),  # reserved opcode
        (client_frame(OP_PING, b"x" * 126), CLOSE_PROTOCOL_ERROR),  # control too long
        (client_frame(OP_PING, b"x", fin=False), CLOSE_PROTOCOL_ERROR),  # fragmented control
        (client_frame(OP_CONTINUATION, b"x"), CLOSE_PROTOCOL_ERROR),  # nothing to continue
        (
            client_frame(OP_TEXT, b"x", fin=False) + client_frame(OP_TEXT, b"y"),
            CLOSE_PROTOCOL_ERROR,  # a new message inside a fragmented one
        ),
        (client_frame(OP_TEXT, b"\xff\xfe"), CLOSE_INVALID_DATA),
        (client_frame(OP_BINARY, b"x" * (MAX_MESSAGE + 1)), CLOSE_TOO_BIG),
        (
            client_frame(OP_TEXT, b"x" * 6000, fin=False)
            + client_frame(OP_CONTINUATION, b"x" * 6000),
            CLOSE_TOO_BIG,  # fragments add up past the bound
        ),
    ],
)
def test_parser_refuses_what_a_client_may_not_send(wire: bytes, code: int) -> None:
    parser = FrameParser(MAX_MESSAGE)
    with pytest.raises(FrameError) as raised:
        parser.receive_data(wire)
    assert raised.value.code == code


def test_a_header_claiming_a_huge_frame_is_refused_before_its_payload_arrives() -> None:
    header = struct.pack("!BBQ", 0x82, 0x80 | 127, 2**40) + b"mask"
    with pytest.raises(FrameError) as raised:
        FrameParser(MAX_MESSAGE).receive_data(header)
    assert raised.value.code == CLOSE_TOO_BIG


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", (CLOSE_NO_STATUS, "")),
        (struct.pack("!H", 1000), (1000, "")),
        (struct.pack("!H", 4001) + "bye é".encode(), (4001, "bye é")),
    ],
)
def test_parse_close_reads_code_and_reason(payload: bytes, expected: tuple[int, str]) -> None:
    assert parse_close(payload) == expected


@pytest.mark.parametrize(
    "payload",
    [b"\x03", struct.pack("!H", 1005), struct.pack("!H", 999), struct.pack("!H", 1000) + b"\xff"],
)
def test_parse_close_refuses_malformed_payloads(payload: bytes) -> None:
    with pytest.raises(FrameError):
        parse_close(payload)


def test_pongs_and_closes_come_out_as_controls_in_order() -> None:
    parser = FrameParser(MAX_MESSAGE)
    parser.receive_data(
        client_frame(OP_PONG, b"p") + client_frame(OP_TEXT, b"hi") + client_frame(OP_CLOSE, b"")
    )
    assert parser.events() == [
        Control(OP_PONG, b"p"),
        Message("hi", None),
        Control(OP_CLOSE, b""),
    ]
