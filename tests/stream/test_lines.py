"""LineSplitter: bytes in any chunking → complete lines with exact offsets and line numbers."""

from __future__ import annotations

import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from runwatch.stream.core.lines import BOM, Lines, LineSplitter

BIG = 1 << 30


def splitter(max_line_bytes: int = BIG, keep: int = 64 * 1024, **kw: int) -> LineSplitter:
    return LineSplitter(max_line_bytes=max_line_bytes, keep=keep, **kw)


def feed_all(split: LineSplitter, chunks: list[bytes]) -> list[Lines]:
    """Feed every chunk, then finish; return every non-empty batch of lines."""
    batches = [split.feed(chunk) for chunk in chunks]
    batches.append(split.finish())
    return [batch for batch in batches if batch.items]


def test_partial_line_waits_for_its_newline() -> None:
    """A writer mid-line must never have half an event parsed, nor the checkpoint skip it."""
    data = b'{"a": 1}\n{"b": 2}\n{"c": 3'
    split = splitter()
    seen: list[bytes] = []
    last_newline_end = 0
    for index in range(len(data)):
        byte = data[index : index + 1]
        batch = split.feed(byte)
        if byte == b"\n":
            assert batch.items == [data[last_newline_end:index]]
            assert batch.offset == last_newline_end
            last_newline_end = index + 1
        else:
            assert batch.items == []
        seen.extend(batch.items)
        assert split.offset == last_newline_end
        assert split.pending_bytes == index + 1 - last_newline_end
    assert seen == [b'{"a": 1}', b'{"b": 2}']
    assert split.offset == 18
    assert split.line == 3


def test_finish_yields_the_unterminated_last_line() -> None:
    """Replay reads finished files, whose last line may lack `\\n`; it must not be lost."""
    split = splitter()
    first = split.feed(b'{"a": 1}\n{"c": 3')
    assert first.items == [b'{"a": 1}']
    last = split.finish()
    assert last.items == [b'{"c": 3']
    assert last.unterminated is True
    assert (last.offset, last.line, last.end) == (9, 2, 16)
    assert (split.offset, split.line, split.pending_bytes) == (16, 3, 0)
    again = split.finish()
    assert again.items == []
    assert again.unterminated is False
    assert split.offset == 16


def test_finish_after_a_terminated_file_yields_nothing() -> None:
    """A file ending in `\\n` has no extra empty last line."""
    split = splitter()
    assert split.feed(b"a\nb\n").items == [b"a", b"b"]
    tail = split.finish()
    assert tail.items == []
    assert tail.unterminated is False
    assert (split.offset, split.line) == (4, 3)


def test_offsets_and_line_numbers_across_batches() -> None:
    """Dead letters and checkpoints point at bytes and 1-based lines users can open."""
    split = splitter()
    one = split.feed(b"a\nbb\nc")
    two = split.feed(b"cc\n\nddd\n")
    assert (one.offset, one.line, one.items, one.end) == (0, 1, [b"a", b"bb"], 5)
    assert (two.offset, two.line, two.items, two.end) == (5, 3, [b"ccc", b"", b"ddd"], 14)
    assert (split.offset, split.line) == (14, 6)


def test_resumes_from_a_checkpoint() -> None:
    """After a restart, positions continue from the checkpoint, not from zero."""
    split = splitter(offset=1000, line=42)
    batch = split.feed(b"x\nyy\n")
    assert (batch.offset, batch.line, batch.end) == (1000, 42, 1005)
    assert (split.offset, split.line) == (1005, 44)


def test_carriage_returns_are_left_to_the_decoder() -> None:
    """`\\r\\n` lines keep their `\\r` here so byte offsets stay exact; the processor drops it."""
    batch = splitter().feed(b"a\r\nb\r\n")
    assert batch.items == [b"a\r", b"b\r"]
    assert batch.end == 6


line_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b""))


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(line_bytes, max_size=25), st.booleans(), st.data())
def test_any_chunking_reproduces_the_input(
    lines: list[bytes], terminated: bool, data: st.DataObject
) -> None:
    """However the OS hands out bytes, every line comes out once, whole, at its exact place."""
    text = b"\n".join(lines) + (b"\n" if terminated and lines else b"")
    if text.startswith(BOM):
        text = b"x" + text  # a BOM at file start is stripped on purpose (tested below)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    split = splitter()
    rebuilt = b""
    expected_line = 1
    for batch in feed_all(split, chunks):
        assert batch.offset == len(rebuilt)
        assert batch.line == expected_line
        assert batch.oversize == {}
        position = batch.offset
        for item in batch.items:
            assert text[position : position + len(item)] == item
            position += len(item)
            if position < len(text):
                assert text[position : position + 1] == b"\n"
                position += 1
        assert position == batch.end
        rebuilt += b"".join(item + b"\n" for item in batch.items)
        if batch.unterminated:
            rebuilt = rebuilt[:-1]
        expected_line += len(batch.items)
    assert rebuilt == text
    assert split.offset == len(text)
    assert split.line == text.count(b"\n") + 1 + (0 if text.endswith(b"\n") or not text else 1)
    assert split.pending_bytes == 0


def test_bom_at_file_start_is_stripped() -> None:
    """Windows tools write a BOM; the first event must still parse and keep its real offset."""
    batch = splitter().feed(BOM + b'{"a": 1}\n{"b": 2}\n')
    assert batch.items == [b'{"a": 1}', b'{"b": 2}']
    assert batch.offset == 3
    assert batch.end == 3 + 9 + 9


def test_bom_split_across_chunks_is_stripped() -> None:
    """The BOM may arrive a byte at a time, as a live file grows."""
    split = splitter()
    assert split.feed(BOM[:1]).items == []
    assert split.feed(BOM[1:2]).items == []
    batch = split.feed(BOM[2:] + b'{"a": 1}\n')
    assert batch.items == [b'{"a": 1}']
    assert (batch.offset, batch.end) == (3, 12)


def test_bom_on_an_unterminated_only_line_is_stripped() -> None:
    """A one-line file without `\\n` and with a BOM is still one clean event."""
    split = splitter()
    split.feed(BOM + b'{"a": 1}')
    last = split.finish()
    assert last.items == [b'{"a": 1}']
    assert (last.offset, last.end) == (3, 11)


def test_bom_elsewhere_is_data() -> None:
    """Only a BOM opening the file is special; later it is part of the line (and rejected)."""
    assert splitter().feed(b"a\n" + BOM + b"b\n").items == [b"a", BOM + b"b"]
    assert splitter(offset=10, line=3).feed(BOM + b"b\n").items == [BOM + b"b"]


def test_oversize_line_is_cut_and_flagged() -> None:
    """A runaway line must not blow memory, but its size is reported and reading goes on."""
    batch = splitter(max_line_bytes=100, keep=10).feed(b"x" * 250 + b"\nnext\n")
    assert batch.items == [b"x" * 10, b"next"]
    assert batch.oversize == {0: 250}
    assert batch.end == 256


def test_line_of_exactly_max_bytes_is_not_oversize() -> None:
    """The limit is inclusive: max_line_bytes itself is still a normal line."""
    batch = splitter(max_line_bytes=100, keep=10).feed(b"x" * 100 + b"\n")
    assert batch.items == [b"x" * 100]
    assert batch.oversize == {}


def test_oversize_line_across_chunks_keeps_its_real_size() -> None:
    """A long line arriving in pieces is measured whole, and the next line starts right after."""
    split = splitter(max_line_bytes=100, keep=10)
    assert split.feed(b"x" * 150).items == []
    assert split.pending_bytes == 150
    assert split.offset == 0
    batch = split.feed(b"y" * 5 + b"\nnext\n")
    assert batch.items == [b"x" * 10, b"next"]
    assert batch.oversize == {0: 155}
    assert batch.end == split.offset == 161


def test_oversize_line_with_a_long_last_piece_keeps_its_real_size() -> None:
    """The reported size must count every byte of the line, however the chunks fall."""
    split = splitter(max_line_bytes=100, keep=10)
    assert split.feed(b"x" * 150).items == []
    batch = split.feed(b"y" * 200 + b"\nnext\n")
    assert split.offset == 356
    assert batch.items == [b"x" * 10, b"next"]
    assert batch.oversize == {0: 350}


def test_oversize_first_line_after_bom_accounts_for_its_bytes() -> None:
    """offset + size + 1 of a line must be where the next line starts, BOM or not."""
    batch = splitter(max_line_bytes=100, keep=10).feed(BOM + b"x" * 150 + b"\nnext\n")
    assert batch.items[1] == b"next"
    assert batch.items[0].strip(b"x") == b""
    assert batch.offset + batch.oversize[0] + 1 == 3 + 150 + 1


def test_unterminated_oversize_line_is_flagged_on_finish() -> None:
    """A huge last line without `\\n` is still cut, flagged and measured on finish."""
    split = splitter(max_line_bytes=100, keep=10)
    split.feed(b"x" * 120)
    split.feed(b"x" * 130)
    last = split.finish()
    assert last.items == [b"x" * 10]
    assert last.oversize == {0: 250}
    assert last.unterminated is True
    assert split.offset == 250


def test_memory_is_bounded_while_a_line_never_ends() -> None:
    """50 MB without a newline (a corrupt or binary file) must not be held in memory."""
    chunk = b"0123456789abcdef" * 65536  # 1 MiB, no newline
    split = splitter(max_line_bytes=1 << 20, keep=64 * 1024)
    tracemalloc.start()
    try:
        for n in range(1, 51):
            assert split.feed(chunk).items == []
            assert split.pending_bytes == n * len(chunk)
            assert split.offset == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * (1 << 20)
    batch = split.feed(b"\n" + b'{"a": 1}\n')
    assert batch.items == [chunk[: 64 * 1024], b'{"a": 1}']
    assert batch.oversize == {0: 50 * len(chunk)}
    assert batch.offset == 0
    assert split.offset == batch.end == 50 * len(chunk) + 1 + 9
    assert split.pending_bytes == 0


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.integers(0, 400), min_size=1, max_size=8), st.booleans(), st.data())
def test_oversize_accounting_under_any_chunking(
    sizes: list[int], terminated: bool, data: st.DataObject
) -> None:
    """Whatever the chunking, offset + sizes of the lines (cut or not) land on `end`."""
    lines = [bytes([65 + i % 26]) * size for i, size in enumerate(sizes)]
    text = b"\n".join(lines) + (b"\n" if terminated else b"")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=10)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    split = splitter(max_line_bytes=100, keep=10)
    got: list[tuple[bytes, int]] = []
    for batch in feed_all(split, chunks):
        position = batch.offset
        for index, item in enumerate(batch.items):
            size = batch.oversize.get(index, len(item))
            got.append((item, size))
            position += size + (0 if batch.unterminated else 1)
        assert position == batch.end
    expected = [(line[:10] if len(line) > 100 else line, len(line)) for line in lines]
    if not terminated and not lines[-1]:
        expected.pop()  # an empty unterminated last line is no line at all
    assert got == expected
    assert split.offset == len(text)
