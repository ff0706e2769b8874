"""The run folder: layout, template, input streaming, messages, attachments, safe reads, first message."""

from __future__ import annotations

import base64
import filecmp
import io
import json
import os
import tracemalloc
from pathlib import Path

import pytest

from fsrlm.errors import InputError, WorkspaceError
from fsrlm.prompts import InputSummary, first_message
from fsrlm.workspace import INLINE_LIMIT, LAYOUT, Workspace, sanitize_attachment_name

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.create("run-1", tmp_path / "runs")


def summary_of(ws: Workspace, prompt, question: str | None = None) -> InputSummary:
    size = ws.write_prompt(prompt)
    head, tail = ws.input_preview(size)
    return InputSummary(size_bytes=size, head=head, tail=tail, question=question)


def prompt_bytes(ws: Workspace) -> bytes:
    return (ws.root / "input" / "prompt.md").read_bytes()


# -- layout and the parent folder ------------------------------------------------------


def test_layout_created(ws: Workspace, tmp_path: Path) -> None:
    assert ws.root == (tmp_path / "runs" / "run-1").resolve()
    assert ws.run_id == "run-1" and ws.owned is False
    for sub in LAYOUT:
        assert (ws.root / sub).is_dir(), sub
    for sub in ("input", "input/attachments", "state", "cache/llm", "scratch/scripts", "output", "tools",
                ".claude", ".agent"):
        assert (ws.root / sub).is_dir(), sub


def test_temp_workspace_is_owned_and_removable() -> None:
    ws = Workspace.create("tmp-run")
    try:
        assert ws.owned is True and ws.root.is_dir()
        assert (ws.root / "input" / "attachments").is_dir()
    finally:
        ws.remove()
    assert not ws.root.exists()


def test_given_parent_is_never_wiped(tmp_path: Path) -> None:
    parent = tmp_path / "mine"
    parent.mkdir()
    (parent / "notes.txt").write_text("keep me")
    (parent / "old-run").mkdir()
    (parent / "old-run" / "answer.md").write_text("old answer")

    first = Workspace.create("run-a", parent)
    second = Workspace.create("run-b", parent)
    assert first.root != second.root
    assert first.root.parent == second.root.parent == parent.resolve()
    assert (parent / "notes.txt").read_text() == "keep me"
    assert (parent / "old-run" / "answer.md").read_text() == "old answer"

    first.remove()  # removing a run removes only its own folder
    assert not first.root.exists() and second.root.is_dir()
    assert (parent / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in parent.iterdir()) == ["notes.txt", "old-run", "run-b"]


def test_existing_run_folder_is_not_reused(tmp_path: Path) -> None:
    parent = tmp_path / "runs"
    (parent / "run-x").mkdir(parents=True)
    (parent / "run-x" / "precious").write_text("data")
    with pytest.raises(WorkspaceError, match="already exists"):
        Workspace.create("run-x", parent)
    assert (parent / "run-x" / "precious").read_text() == "data"
    assert sorted(p.name for p in (parent / "run-x").iterdir()) == ["precious"]


def test_parent_created_when_missing(tmp_path: Path) -> None:
    ws = Workspace.create("r", tmp_path / "a" / "b")
    assert ws.root == (tmp_path / "a" / "b" / "r").resolve()


def test_open_existing_run(ws: Workspace) -> None:
    ws.write_job({"run_id": "run-1"})
    again = Workspace.open(ws.root)
    assert (again.root, again.run_id, again.owned) == (ws.root, "run-1", False)
    with pytest.raises(WorkspaceError, match="not an fsRLM run folder"):
        Workspace.open(ws.root / "input")


def test_template_installed(ws: Workspace) -> None:
    assert (ws.root / ".claude" / "CLAUDE.md").is_file()
    assert (ws.root / ".claude" / "skills" / "rlm" / "SKILL.md").is_file()
    assert (ws.root / "tools" / "llm_client.py").is_file()
    assert (ws.root / "tools" / "chunking.py").is_file()
    assert not (ws.root / "tools" / "relay.py").exists()  # the docker relay stays out of the agent's view
    assert not (ws.root / "tools" / "__init__.py").exists()
    assert not (ws.root / "tools" / "__pycache__").exists()
    skill = (ws.root / ".claude" / "skills" / "rlm" / "SKILL.md").read_text()
    assert "llm_batch" in skill


# -- prompt input ----------------------------------------------------------------------


def test_prompt_from_str(ws: Workspace) -> None:
    text = "héllo ✓\r\nline two\n\x00tab\t"
    assert ws.write_prompt(text) == len(text.encode("utf-8"))
    assert prompt_bytes(ws) == text.encode("utf-8")


def test_prompt_from_bytes_binary_and_invalid_utf8(ws: Workspace) -> None:
    data = bytes(range(256)) + b"\xff\xfe\xc3\x28 not utf-8 \x80"
    assert ws.write_prompt(data) == len(data)
    assert prompt_bytes(ws) == data


def test_prompt_from_path(ws: Workspace, tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)  # several copy blocks, binary
    src.write_bytes(data)
    assert ws.write_prompt(src) == len(data)
    assert prompt_bytes(ws) == data


def test_prompt_from_binary_file_object(ws: Workspace) -> None:
    data = b"\x00\x01bin\xff" * 1000
    assert ws.write_prompt(io.BytesIO(data)) == len(data)
    assert prompt_bytes(ws) == data


def test_prompt_from_text_file_object(ws: Workspace, tmp_path: Path) -> None:
    src = tmp_path / "t.txt"
    src.write_text("ünïcode\n" * 500, encoding="utf-8")
    with src.open("r", encoding="utf-8", newline="") as f:
        ws.write_prompt(f)
    assert prompt_bytes(ws) == src.read_bytes()
    ws.write_prompt(io.StringIO("abc ✓"))
    assert prompt_bytes(ws) == "abc ✓".encode()


def test_prompt_str_is_text_not_a_path(ws: Workspace, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("file content")
    ws.write_prompt(str(tmp_path / "f.txt"))
    assert prompt_bytes(ws) == str(tmp_path / "f.txt").encode()


def test_prompt_missing_path_and_wrong_type(ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read input file"):
        ws.write_prompt(tmp_path / "missing.txt")
    with pytest.raises(InputError, match="prompt must be"):
        ws.write_prompt(12345)  # type: ignore[arg-type]


def _big_file(path: Path, size: int) -> None:
    block = (b"0123456789abcdef" * 4096)[:65536]
    with path.open("wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.write(block[: size % len(block)])


def test_large_input_is_streamed(ws: Workspace, tmp_path: Path) -> None:
    size = 200 * 1024 * 1024
    src = tmp_path / "huge.txt"
    _big_file(src, size)
    tracemalloc.start()
    try:
        written = ws.write_prompt(src)
        head, tail = ws.input_preview(written)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert written == size
    assert peak < 16 * 1024 * 1024, f"peak {peak} bytes: the input was held in memory"
    assert len(head) == 3000 and len(tail) == 1500
    try:
        assert filecmp.cmp(src, ws.root / "input" / "prompt.md", shallow=False)
    finally:  # pytest keeps recent temp dirs: do not leave 400 MB behind
        (ws.root / "input" / "prompt.md").unlink()
        src.unlink()


def test_large_file_object_is_streamed(ws: Workspace, tmp_path: Path) -> None:
    size = 64 * 1024 * 1024
    src = tmp_path / "big.bin"
    _big_file(src, size)
    tracemalloc.start()
    try:
        with src.open("rb") as f:
            written = ws.write_prompt(f)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    src.unlink()
    assert written == size
    assert peak < 8 * 1024 * 1024


# -- messages --------------------------------------------------------------------------


def image_block(data: bytes = PNG, media_type: str = "image/png") -> dict:
    return {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                        "data": base64.b64encode(data).decode()}}


def test_messages_transcript_and_question(ws: Workspace) -> None:
    messages = [
        {"role": "user", "content": "Here is the log:\nERROR one\nINFO two"},
        {"role": "assistant", "content": [{"type": "text", "text": "Got it."}]},
        {"role": "user", "content": [{"type": "text", "text": "How many ERROR lines?"},
                                     {"type": "text", "text": "Answer with a number."}]},
    ]
    question = ws.write_messages(messages)
    assert question == "How many ERROR lines?\n\nAnswer with a number."
    saved = json.loads((ws.root / "input" / "messages.json").read_text())
    assert saved == messages
    transcript = prompt_bytes(ws).decode()
    assert transcript.index("## user") < transcript.index("Here is the log:") < transcript.index("## assistant")
    assert transcript.index("Got it.") < transcript.rindex("## user") < transcript.index("How many ERROR lines?")


def test_question_is_last_user_message_even_after_assistant(ws: Workspace) -> None:
    question = ws.write_messages([
        {"role": "user", "content": "first"},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "reply"},
    ])
    assert question == "second"


def test_messages_images_saved_as_attachments(ws: Workspace) -> None:
    jpeg = b"\xff\xd8\xff\xe0fake-jpeg"
    question = ws.write_messages([
        {"role": "user", "content": [image_block(), {"type": "text", "text": "and"},
                                     image_block(jpeg, "image/jpeg"),
                                     {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                                     {"type": "text", "text": "What is shown?"}]},
    ])
    attachments = ws.root / "input" / "attachments"
    assert (attachments / "image-1.png").read_bytes() == PNG
    assert (attachments / "image-2.jpg").read_bytes() == jpeg
    assert sorted(p.name for p in attachments.iterdir()) == ["image-1.png", "image-2.jpg"]
    transcript = prompt_bytes(ws).decode()
    assert "[image: input/attachments/image-1.png]" in transcript
    assert "[image: input/attachments/image-2.jpg]" in transcript
    assert "not embedded: url source" in transcript
    assert question.endswith("What is shown?")
    # the base64 data itself is not copied into the transcript
    assert base64.b64encode(PNG).decode() not in transcript


def test_messages_document_block(ws: Workspace) -> None:
    ws.write_messages([{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "DOC BODY"}},
        {"type": "text", "text": "summarise"}]}])
    assert "DOC BODY" in prompt_bytes(ws).decode()


@pytest.mark.parametrize(("messages", "match"), [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ({"role": "user", "content": "x"}, "non-empty list"),
    (["hello"], r"messages\[0\] must be an object"),
    ([{"content": "x"}], r"messages\[0\] must be an object with role"),
    ([{"role": "system", "content": "x"}], r"messages\[0\].*role 'user' or 'assistant'"),
    ([{"role": "user", "content": "ok"}, {"role": "user", "content": 42}], r"messages\[1\]\.content must be"),
    ([{"role": "user"}], r"messages\[0\]\.content must be"),
    ([{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}],
     r"messages\[0\]\.content\[0\] has unsupported type 'tool_result'"),
    ([{"role": "user", "content": ["bare string"]}], r"messages\[0\]\.content\[0\] has unsupported type"),
    ([{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                 "data": "not base64!!"}}]}],
     r"messages\[0\]\.content\[0\] holds invalid base64"),
])
def test_messages_wrong_formats(ws: Workspace, messages, match: str) -> None:
    with pytest.raises(InputError, match=match):
        ws.write_messages(messages)


# -- attachments -----------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ("report.pdf", "report.pdf"),
    ("../../etc/passwd", "passwd"),
    ("/etc/shadow", "shadow"),
    ("..\\..\\windows\\system32\\cmd.exe", "cmd.exe"),
    ("C:\\Users\\me\\notes.txt", "notes.txt"),
    ("a b$c.txt", "a_b_c.txt"),
    (".hidden", "hidden"),
    ("dir/..", None),
    ("..", None),
    ("/", None),
    ("résumé.pdf", "r_sum_.pdf"),
])
def test_sanitize_attachment_name(raw: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(InputError, match="no usable characters"):
            sanitize_attachment_name(raw)
    else:
        name = sanitize_attachment_name(raw)
        assert name == expected
        assert "/" not in name and "\\" not in name and not name.startswith(".")


def test_sanitize_caps_length() -> None:
    assert len(sanitize_attachment_name("x" * 1000 + ".txt")) == 200


def test_attachments_stay_inside(ws: Workspace, tmp_path: Path) -> None:
    src = tmp_path / "data.csv"
    src.write_bytes(b"a,b\n1,2\n")
    text_file = tmp_path / "t.txt"
    text_file.write_text("text ✓", encoding="utf-8")
    with text_file.open("r", encoding="utf-8") as text_io:
        names = ws.write_attachments({
            "../../escape.txt": "text ✓",
            "/abs/path/bytes.bin": b"\x00\xff",
            "..\\win\\path.csv": src,
            "sub/dir/fileobj.dat": io.BytesIO(b"stream"),
            "textio.txt": text_io,
        })
    assert names == ["escape.txt", "bytes.bin", "path.csv", "fileobj.dat", "textio.txt"]
    attachments = ws.root / "input" / "attachments"
    assert sorted(p.name for p in attachments.iterdir()) == sorted(names)
    assert (attachments / "escape.txt").read_bytes() == "text ✓".encode()
    assert (attachments / "bytes.bin").read_bytes() == b"\x00\xff"
    assert (attachments / "path.csv").read_bytes() == b"a,b\n1,2\n"
    assert (attachments / "fileobj.dat").read_bytes() == b"stream"
    assert (attachments / "textio.txt").read_bytes() == "text ✓".encode()
    assert not (ws.root / "input" / "escape.txt").exists() and not (ws.root / "escape.txt").exists()
    assert not (tmp_path / "escape.txt").exists() and not Path("/abs").exists()


def test_duplicate_attachment_names(ws: Workspace) -> None:
    with pytest.raises(InputError, match="same file name 'x.txt'"):
        ws.write_attachments({"a/x.txt": "1", "b/x.txt": "2"})


def test_attachment_may_not_overwrite_a_message_image(ws: Workspace) -> None:
    ws.write_messages([{"role": "user", "content": [image_block(), {"type": "text", "text": "q"}]}])
    with pytest.raises(InputError, match="image-1.png"):
        ws.write_attachments({"image-1.png": b"other"})
    assert (ws.root / "input" / "attachments" / "image-1.png").read_bytes() == PNG


def test_attachment_errors_are_input_errors(ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.bin"):
        ws.write_attachments({"m.bin": tmp_path / "missing.bin"})
    with pytest.raises(InputError, match="attachment"):
        ws.write_attachments({"n.bin": 12345})  # type: ignore[dict-item]


# -- reading what the agent wrote ------------------------------------------------------


def test_read_plain_file_and_missing(ws: Workspace) -> None:
    (ws.root / "output" / "answer.md").write_text("42\n")
    assert ws.read("output/answer.md") == "42\n"
    assert ws.read("output/nothing.md") is None


def test_read_refuses_symlink_out_of_workspace(ws: Workspace, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    (ws.root / "output" / "answer.md").symlink_to(secret)
    assert ws.read("output/answer.md") is None
    # a symlinked directory on the way is refused too
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "answer.md").write_text("host secret")
    (ws.root / "output").rename(ws.root / "output.old")
    (ws.root / "output").symlink_to(outside)
    assert ws.read("output/answer.md") is None


def test_read_refuses_symlink_inside_workspace_too(ws: Workspace) -> None:
    (ws.root / "state" / "real.txt").write_text("x")
    (ws.root / "output" / "answer.md").symlink_to(ws.root / "state" / "real.txt")
    assert ws.read("output/answer.md") is None


def test_read_refuses_hard_link(ws: Workspace, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    try:
        os.link(secret, ws.root / "output" / "answer.md")
    except OSError as e:  # e.g. protected_hardlinks or a different filesystem
        pytest.skip(f"cannot make a hard link here: {e}")
    assert ws.read("output/answer.md") is None


def test_read_refuses_fifo_without_blocking(ws: Workspace) -> None:
    os.mkfifo(ws.root / "output" / "answer.md")
    assert ws.read("output/answer.md") is None


def test_read_refuses_escaping_paths(ws: Workspace) -> None:
    with pytest.raises(WorkspaceError):
        ws.read("../outside.txt")
    with pytest.raises(WorkspaceError):
        ws.read("/etc/passwd")


def test_read_caps_size(ws: Workspace) -> None:
    (ws.root / "output" / "answer.md").write_bytes(b"a" * 100)
    text = ws.read("output/answer.md", max_bytes=10)
    assert text is not None and text.startswith("a" * 10 + "\n") and "truncated at 10 bytes" in text
    assert ws.read("output/answer.md", max_bytes=100) == "a" * 100


def test_read_invalid_utf8_is_replaced(ws: Workspace) -> None:
    (ws.root / "output" / "answer.md").write_bytes(b"ok \xff\xfe end")
    assert ws.read("output/answer.md") == "ok \ufffd\ufffd end"


def test_artifacts_skip_bad_lines(ws: Workspace) -> None:
    (ws.root / "state" / "artifacts.jsonl").write_text('{"a": 1}\nnot json\n[1, 2]\n\n{"b": 2}\n')
    assert ws.artifacts() == [{"a": 1}, {"value": [1, 2]}, {"b": 2}]
    assert ws.artifacts(max_items=1) == [{"a": 1}]


# -- the agent's first message ---------------------------------------------------------


def test_first_message_inline_at_the_limit(ws: Workspace) -> None:
    # exactly INLINE_LIMIT bytes, with a distinct marker in the middle
    lines = [f"line {i:05d} {'m' * 40}\n" for i in range(1000)]
    text = "".join(lines)[:INLINE_LIMIT - len("MIDDLE-MARKER\n")]
    half = len(text) // 2
    text = text[:half] + "MIDDLE-MARKER\n" + text[half:]
    assert len(text.encode()) == INLINE_LIMIT
    message = first_message(summary_of(ws, text, question="How many lines?"))
    assert f"{INLINE_LIMIT} bytes) in full" in message
    assert f"<input>\n{text}\n</input>" in message  # the whole input, middle included
    assert "MIDDLE-MARKER" in message
    assert "<question>\nHow many lines?\n</question>" in message
    assert "large" not in message.split("<input>")[0]


def test_first_message_inline_keeps_multibyte_text_intact(ws: Workspace) -> None:
    text = "é" * 2000 + "✓" * 1000  # 7000 bytes, multibyte characters around every cut
    message = first_message(summary_of(ws, text))
    assert f"<input>\n{text}\n</input>" in message
    assert "\ufffd" not in message


def test_first_message_preview_just_over_the_limit(ws: Workspace) -> None:
    text = "h" * 3000 + "MIDDLE" + "m" * (INLINE_LIMIT - 3000 - 1500 - 6 + 1) + "t" * 1500
    assert len(text) == INLINE_LIMIT + 1
    message = first_message(summary_of(ws, text, question="q?"))
    assert f"input/prompt.md holds {INLINE_LIMIT + 1:,} bytes" in message
    assert "<input-start>\n" + "h" * 3000 + "\n</input-start>" in message
    assert "<input-end>\n" + "t" * 1500 + "\n</input-end>" in message
    assert "MIDDLE" not in message
    assert "chunking.py" in message and "llm_batch" in message
    assert "<question>\nq?\n</question>" in message


def test_question_at_the_end_of_a_huge_prompt_is_shown(ws: Workspace) -> None:
    filler = "".join(f"2026-01-01 host-{i % 7} INFO request {i} ok\n" for i in range(50_000))
    text = filler + "\nQuestion: how many requests came from host-3?\n"
    summary = summary_of(ws, text)  # no separate question: it sits at the end of the input
    message = first_message(summary)
    assert summary.size_bytes > 1_000_000
    assert "how many requests came from host-3?" in message
    assert "no separate question" in message
    assert len(message) < 10_000


def test_separate_question_shown_for_huge_prompt(ws: Workspace) -> None:
    message = first_message(summary_of(ws, "x" * 500_000, question="Which service failed first?"))
    assert "<question>\nWhich service failed first?\n</question>" in message
    assert "no separate question" not in message


def test_huge_question_is_bounded_but_its_end_shown(ws: Workspace) -> None:
    # messages=[{"role": "user", "content": <a huge log + the question>}]: the last user text is the question
    big = "".join(f"line {i} INFO fine\n" for i in range(100_000)) + "How many lines say INFO?"
    question = ws.write_messages([{"role": "user", "content": big}])
    size = (ws.root / "input" / "prompt.md").stat().st_size
    head, tail = ws.input_preview(size)
    message = first_message(InputSummary(size_bytes=size, head=head, tail=tail, question=question))
    assert "How many lines say INFO?" in message
    assert "input/question.md" in message
    assert len(message) < 3 * INLINE_LIMIT


def test_first_message_lists_attachments(ws: Workspace) -> None:
    summary = summary_of(ws, "small").model_copy(update={"attachments": ["a.png", "b.csv"]})
    assert "Attachments in input/attachments/: a.png, b.csv" in first_message(summary)
