"""Images and PDFs in a turn (issue 15), through the real local stand-ins.

The scenario of the issue: an image content block, as agent-chat-ui sends it through the LangGraph server
or a programmatic caller passes it, used to reach the Gemma stand-in (llama.cpp, a text-only model: HTTP
500 "image input is not supported"), was retried, counted two failures toward Gemma's breaker, and then
the Gemini stand-in answered ignoring the image. Now each backend declares what it takes, the router
sends the turn only where it can be read (the reason says why), a backend that refuses the input anyway
is the user's error (told in words, no retry, no fallback, the breaker untouched), and bad files are
refused from their bytes before any model call, with nothing saved.

The Vertex stand-in says what it received ("[stand-in received image/png 64x48, 136 bytes, sha256 ...]"),
so these tests prove that the very bytes sent reached Gemini's side.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from PIL import Image

from graph import build_graph, validation
from graph.backends import Accepts, Backends
from graph.nodes import attachment_limits
from graph.router import NoBackendTakes, RouteDecision, Router, RouteRequest, Signals
from graph.settings import Settings
from graph.validation import AttachmentLimits, InvalidInput, check_attachment, check_message_attachments
from tests.conftest import local_settings
from tests.support.fault_server import fault_server

META = "hybrid_chat"


# --- files --------------------------------------------------------------------------------------
def png(width: int = 64, height: int = 48, color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def gif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buf, "GIF")
    return buf.getvalue()


PAGE = "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>"


def pdf(pages: int = 1) -> bytes:
    """A minimal valid PDF with `pages` empty pages (uncompressed objects)."""
    kids = " ".join(f"{3 + i} 0 R" for i in range(pages))
    return pdf_of(
        [
            "<< /Type /Catalog /Pages 2 0 R >>",
            f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>",
            *[PAGE] * pages,
        ]
    )


def pdf_of(objects: list[str], *, padding: int = 0) -> bytes:
    """A PDF of these objects, numbered from 1 (1: the catalog), with a correct cross-reference table;
    `padding`: that many bytes more, in a comment."""
    out = b"%PDF-1.4\n" + (b"%" + b"x" * (padding - 2) + b"\n" if padding >= 2 else b"")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def pdf_with_pages_compressed(pages: int) -> bytes:
    """A PDF 1.5 whose pages are inside a compressed object stream, found through a cross-reference
    stream (how most producers write PDFs now): no `/Type /Page` in its bytes."""
    page_ids = list(range(3, 3 + pages))
    header, objects = b"", b""
    for i in page_ids:
        header += f"{i} {len(objects)} ".encode()
        objects += PAGE.encode() + b" "
    packed = zlib.compress(header + objects)
    stream_id, xref_id = 3 + pages, 4 + pages
    out, at = b"%PDF-1.5\n", {}
    kids = " ".join(f"{i} 0 R" for i in page_ids)
    for i, body in (
        (1, b"<< /Type /Catalog /Pages 2 0 R >>"),
        (2, f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode()),
        (
            stream_id,
            f"<< /Type /ObjStm /N {pages} /First {len(header)} /Filter /FlateDecode /Length {len(packed)} >>"
            f"\nstream\n".encode()
            + packed
            + b"\nendstream",
        ),
    ):
        at[i] = len(out)
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    at[xref_id] = len(out)

    def row(kind: int, field: int, index: int) -> bytes:
        return bytes([kind]) + field.to_bytes(4, "big") + index.to_bytes(2, "big")

    rows = b"".join(
        row(0, 0, 65535) if i == 0 else row(2, stream_id, i - 3) if i in page_ids else row(1, at[i], 0)
        for i in range(xref_id + 1)
    )
    out += (
        f"{xref_id} 0 obj\n<< /Type /XRef /Size {xref_id + 1} /W [1 4 2] /Root 1 0 R /Length {len(rows)} >>"
        "\nstream\n"
    ).encode()
    return out + rows + f"\nendstream\nendobj\nstartxref\n{at[xref_id]}\n%%EOF\n".encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


# The shapes clients send (all standard LangChain content blocks or what agent-chat-ui sends).
def standard_block(data: bytes, mime: str = "image/png", kind: str = "image") -> dict[str, Any]:
    return {"type": kind, "base64": b64(data), "mime_type": mime}


def agent_chat_ui_block(data: bytes, mime: str = "image/png", kind: str = "image") -> dict[str, Any]:
    return {"type": kind, "mimeType": mime, "data": b64(data), "metadata": {"name": "shot.png"}}


def legacy_block(data: bytes, mime: str = "image/png", kind: str = "image") -> dict[str, Any]:
    return {"type": kind, "source_type": "base64", "data": b64(data), "mime_type": mime}


def openai_block(data: bytes, mime: str = "image/png", kind: str = "image") -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{b64(data)}"}}


SHAPES = {
    "standard": standard_block,
    "agent-chat-ui": agent_chat_ui_block,
    "legacy": legacy_block,
    "openai": openai_block,
}


def turn(text: str, *blocks: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [HumanMessage(content=[{"type": "text", "text": text}, *blocks])]}


def meta(out: dict[str, Any]) -> dict[str, Any]:
    return out["messages"][-1].response_metadata[META]


# --- the bytes decide, not the name ---------------------------------------------------------------
LIMITS = AttachmentLimits(max_bytes=200_000, max_count=2, max_pixels=1_000_000, max_pdf_pages=3)


def test_an_image_is_known_by_its_bytes() -> None:
    info = check_attachment(png(), LIMITS, "holiday.pdf")  # the name says PDF: the bytes say PNG
    assert (info.kind, info.mime_type, info.width, info.height) == ("image", "image/png", 64, 48)
    assert check_attachment(pdf(2), LIMITS).pages == 2


@pytest.mark.parametrize(
    "data, words",
    [
        (b"PK\x03\x04" + b"\x00" * 100, "not an image (PNG, JPEG, GIF, WebP) or a PDF: it looks like a ZIP"),
        (b"hello, this is text", "it looks like text"),
        (b"", "is empty"),
        (png()[:60], "does not decode"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "does not decode"),
        (pdf(4), "has over 3 pages; the limit is 3"),
        (pdf(1)[:-8], "not a complete PDF"),
        (b"\x00" * 200_001, "200,001 bytes; the limit is 200,000"),
    ],
    ids=["zip", "text", "empty", "truncated-png", "broken-png", "pdf-pages", "truncated-pdf", "oversize"],
)
def test_bad_files_are_refused_saying_why(data: bytes, words: str) -> None:
    with pytest.raises(InvalidInput, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_attachment(data, LIMITS, "shot.png")


# --- PDFs: read with pypdf, their page tree walked within bounds ---------------------------------
PAGES_OF = "<< /Type /Catalog /Pages 2 0 R >>"
PDF_LIMITS = AttachmentLimits(max_pdf_pages=3)  # and the 5 MB a file of the defaults


def pages_counting(count: str, kids: str = "3 0 R") -> str:
    return f"<< /Type /Pages /Kids [{kids}] /Count {count} >>"


def nested_page_tree(levels: int) -> list[str]:
    """A page tree `levels` deep: each node's only kid is the next node, the last one's is the page."""
    return [PAGES_OF, *[pages_counting("1", f"{i + 1} 0 R") for i in range(2, levels + 2)], PAGE]


def nested_in(obj: str, opening: str, closing: str, levels: int = 100_000) -> str:
    """`obj` (a dictionary) with a value nested `levels` deep added."""
    return obj.removesuffix(">>") + "/X " + opening * levels + closing * levels + ">>"


def protected_pdf() -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    writer.encrypt("open-sesame")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.mark.parametrize(
    "data, words",
    [
        (b"%PDF-1.4\n" + os.urandom(4000) + b"\n%%EOF\n", "is a damaged PDF"),
        (pdf_of([PAGES_OF, pages_counting("1000000000"), PAGE]), "says it has 1000000000 pages but holds 1"),
        (pdf_of([PAGES_OF, pages_counting("-5"), PAGE]), "says it has -5 pages but holds 1"),
        (pdf_of([PAGES_OF, "<< /Type /Pages /Kids [3 0 R] >>", PAGE]), "does not say how many pages"),
        (pdf_of([PAGES_OF, pages_counting("1"), nested_in(PAGE, "<< /A ", ">> ")]), "nested over 64 deep"),
        (pdf_of([nested_in(PAGES_OF, "<< /A ", ">> "), pages_counting("1"), PAGE]), "nested over 64 deep"),
        (pdf_of([PAGES_OF, pages_counting("1"), nested_in(PAGE, "[", "]")]), "is a damaged PDF"),
        (pdf_of(nested_page_tree(1000)), "page tree is over 64 levels deep"),
        (pdf_of([PAGES_OF, pages_counting("1", "2 0 R")]), "page tree loops"),
        (pdf_of([PAGES_OF, pages_counting("0", "")]), "a PDF without any page"),
        (pdf_of([PAGES_OF]), "is a damaged PDF"),
        (protected_pdf(), "is protected by a password"),
        (pdf_with_pages_compressed(5), "has over 3 pages; the limit is 3"),
    ],
    ids=[
        "random-bytes",
        "count-1e9",
        "count-minus-5",
        "no-count",
        "page-nested-100k",
        "catalog-nested-100k",
        "arrays-nested-100k",
        "tree-1000-deep",
        "loop",
        "no-page",
        "no-page-tree",
        "password",
        "pages-compressed",
    ],
)
def test_malformed_pdfs_are_refused_saying_why(
    data: bytes, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The malformed PDFs that used to pass (a `%PDF-` header and a `%%EOF` were enough, and pages were
    counted from the bytes): each refused in words, nothing from pypdf in the log (a crafted file made it
    log 17,000 lines), and in bounded time."""
    started = time.perf_counter()
    with pytest.raises(InvalidInput, match=words), caplog.at_level(logging.DEBUG):
        check_attachment(data, PDF_LIMITS, "report.pdf")
    assert time.perf_counter() - started < validation.PDF_READ_S + 2
    assert not [r for r in caplog.records if r.name.startswith("pypdf")]


def test_a_pdf_counts_its_real_pages() -> None:
    """Pages inside a compressed object stream count (the bytes' `/Type /Page` missed them all); a deep
    tree within the bounds is read."""
    assert check_attachment(pdf_with_pages_compressed(3), PDF_LIMITS).pages == 3
    assert check_attachment(pdf_of(nested_page_tree(10)), PDF_LIMITS).pages == 1


def test_reading_a_pdf_stops_at_its_time_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The page tree's walk checks its deadline at every node: a file that takes longer is refused."""
    monkeypatch.setattr(validation, "PDF_READ_S", -1.0)
    monkeypatch.setattr(validation, "_decoded", type(validation._decoded)())
    with pytest.raises(InvalidInput, match="takes too long to read"):
        check_attachment(pdf(2), LIMITS)


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    buf = io.BytesIO()
    Image.new("1", (4000, 4000)).save(buf, "PNG")  # 16 Mpx in a few kB
    assert len(buf.getvalue()) < 50_000
    with pytest.raises(InvalidInput, match="4000x4000 pixels; the limit is 1,000,000"):
        check_attachment(buf.getvalue(), LIMITS)


def bilevel_png(width: int, height: int) -> bytes:
    """A PNG of many pixels in a few kB (one bit a pixel on the wire)."""
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Every decode the checks run: (the bytes' size, the thread that ran it); a fresh digest cache."""
    seen: list[tuple[int, str]] = []
    real = validation._decode

    def recording(data: bytes) -> None:
        seen.append((len(data), threading.current_thread().name))
        real(data)

    monkeypatch.setattr(validation, "_decode", recording)
    monkeypatch.setattr(validation, "_decoded", type(validation._decoded)())
    return seen


def test_the_default_image_limit_is_4096x4096_and_the_settings_agree() -> None:
    """16.7 MP: what the models read, at most 64 MiB decoded (not the 40 MP, 160 MB, of before)."""
    assert AttachmentLimits().max_pixels == 4096 * 4096
    assert attachment_limits(Settings(_env_file=None)) == AttachmentLimits()  # type: ignore[call-arg]
    assert check_attachment(bilevel_png(4096, 4096), AttachmentLimits()).width == 4096
    with pytest.raises(InvalidInput, match=r"4097x4096 pixels; the limit is 16,777,216 pixels .*a smaller"):
        check_attachment(bilevel_png(4097, 4096), AttachmentLimits())


def test_an_image_over_the_limit_is_refused_from_its_header_without_decoding(
    decodes: list[tuple[int, str]],
) -> None:
    with pytest.raises(InvalidInput, match=r"6300x6300 pixels; the limit is 16,777,216 .*about 4096x4096"):
        check_attachment(bilevel_png(6300, 6300), AttachmentLimits())
    assert decodes == []


def test_a_message_over_its_pixel_budget_is_refused_before_any_image_is_decoded(
    decodes: list[tuple[int, str]],
) -> None:
    """Each image within its own limit, together over the message's: refused, nothing decoded (the
    budget bounds what one message costs); the same images in two messages pass."""
    limits = AttachmentLimits(max_pixels=1_000_000, max_message_pixels=1_500_000)
    first, second = bilevel_png(1000, 1000), bilevel_png(1000, 999)
    with pytest.raises(
        InvalidInput,
        match=r"images have 1,999,000 pixels together; the limit is 1,500,000 a message: send fewer",
    ):
        check_message_attachments([(first, "a.png"), (second, "b.png")], limits)
    assert decodes == []
    assert [i.pixels for i in check_message_attachments([(first, "a.png"), (pdf(2), None)], limits)] == [
        1_000_000,
        0,
    ]
    assert check_message_attachments([(second, "b.png")], limits)[0].pixels == 999_000
    assert [size for size, _ in decodes] == [len(first), len(second)]


def test_a_turn_is_checked_a_message_at_a_time_through_the_graphs_check() -> None:
    from graph.nodes import check_attachments

    s = Settings(_env_file=None, attachment_max_message_pixels=1_500_000)  # type: ignore[call-arg]
    image = standard_block(bilevel_png(1000, 1000))
    with pytest.raises(InvalidInput, match="2,000,000 pixels together"):
        check_attachments([HumanMessage(content=[image, image])], s)
    assert len(check_attachments([HumanMessage(content=[image]), HumanMessage(content=[image])], s)) == 2


def test_images_are_decoded_one_at_a_time_on_the_decode_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight callers at once (the way in and turns, in their own threads): one decode at a time, always
    on the process's decode thread."""
    running, most, names = 0, 0, set()
    lock = threading.Lock()

    def slow(data: bytes) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            names.add(threading.current_thread().name)
        time.sleep(0.02)
        with lock:
            running -= 1

    monkeypatch.setattr(validation, "_decode", slow)
    monkeypatch.setattr(validation, "_decoded", type(validation._decoded)())
    images = [png(8 + i, 8) for i in range(8)]  # different bytes: none is known already
    callers = [threading.Thread(target=check_attachment, args=(d, LIMITS)) for d in images]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert most == 1 and len(names) == 1 and names.pop().startswith("image-decode")


def test_bytes_that_decoded_are_not_decoded_again_and_broken_ones_always_are(
    decodes: list[tuple[int, str]],
) -> None:
    """The way in and the graph both check a message: its images are decoded once."""
    image, broken = png(), png()[:60]
    for _ in range(2):
        check_attachment(image, LIMITS)
        with pytest.raises(InvalidInput, match="does not decode"):
            check_attachment(broken, LIMITS)
    assert [size for size, _ in decodes] == [len(image), len(broken), len(broken)]


def test_a_jpeg_is_decoded_at_an_eighth_and_a_truncated_one_still_fails() -> None:
    buf = io.BytesIO()
    Image.effect_noise((800, 600), 64).convert("RGB").save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    assert check_attachment(jpeg, AttachmentLimits()).describe().startswith("image/jpeg 800x600")
    with Image.open(io.BytesIO(jpeg)) as img:
        img.draft(None, (100, 75))
        assert img.size == (100, 75)  # what `_decode` holds: 1/64 of the pixels
    with pytest.raises(InvalidInput, match="image/jpeg that does not decode"):
        check_attachment(jpeg[:-200], AttachmentLimits())


# --- what each backend takes ----------------------------------------------------------------------
def test_each_backend_declares_what_it_takes(tmp_path: Path) -> None:
    standins = Backends(local_settings(tmp_path))
    assert standins.accepts("gemma") == Accepts(  # the small stand-in model cannot call tools either
        "Gemma stand-in", frozenset(), standins.accepts("gemma").max_bytes, 4, tools=False
    )
    assert standins.accepts("gemini").kinds == {"image", "pdf"}
    real = Backends(local_settings(tmp_path, gemma_base_url="http://vllm:8000/v1", gemini_project="p"))
    assert real.accepts("gemma").kinds == {"image"} and real.accepts("gemma").label == "Gemma"
    assert real.accepts("gemini").kinds == {"image", "pdf"}
    told = Backends(local_settings(tmp_path, gemma_attachments="image,pdf", gemini_attachments="none"))
    assert told.accepts("gemma").kinds == {"image", "pdf"} and told.accepts("gemini").kinds == set()
    with pytest.raises(ValueError, match="unknown attachment kind"):
        Backends(local_settings(tmp_path, gemma_attachments="video")).accepts("gemma")


# --- the router's one rule, whatever the policy ---------------------------------------------------
STANDINS = {
    "gemma": Accepts("Gemma stand-in", frozenset(), 10**9, 4),
    "gemini": Accepts("Gemini", frozenset({"image", "pdf"}), 10**9, 10),
}


def signals(kinds: set[str], accepts: dict[str, Accepts] = STANDINS, count: int = 1) -> Signals:
    up = {"gemma": True, "gemini": True}
    return Signals(
        up, attachments=frozenset(kinds), attachment_count=count, attachment_bytes=100, accepts=accepts
    )


class Always:
    """Any policy (a learned one, a new one): the rule is the router's, not the policy's."""

    def __init__(self, decision: RouteDecision) -> None:
        self.decision = decision

    def decide(self, request: RouteRequest) -> RouteDecision:
        return self.decision


def route(decision: RouteDecision, sig: Signals) -> RouteDecision:
    return Router({"x": Always(decision)}).decide(RouteRequest("x", 10, signals=sig))  # type: ignore[arg-type]


def test_a_turn_goes_only_where_its_attachments_can_be_read() -> None:
    pinned = RouteDecision("gemma", "chosen: gemma", fallback="gemini", retry=True)
    d = route(pinned, signals({"image"}))
    assert (d.backend, d.reason, d.fallback) == ("gemini", "image: Gemma stand-in cannot see images", None)
    assert route(pinned, signals(set())) == pinned  # text only: unchanged
    # The chosen one can, its fallback cannot: no fallback (never an answer that ignores the image).
    both = {**STANDINS, "gemma": Accepts("Gemma", frozenset({"image"}), 10**9, 1)}
    assert route(pinned, signals({"image"}, both)).fallback == "gemini"
    assert route(pinned, signals({"pdf"}, both)).backend == "gemini"
    gemini = RouteDecision("gemini", "chosen: gemini", fallback="gemma", retry=True)
    assert route(gemini, signals({"pdf"}, both)).fallback is None
    # Too many for Gemma's --limit-mm-per-prompt: Gemini.
    assert route(pinned, signals({"image"}, both, count=2)).reason == (
        "image: Gemma takes at most 1 attachment(s) per message"
    )


def test_when_no_backend_can_the_turn_is_refused() -> None:
    with pytest.raises(NoBackendTakes, match="fallback to another model is off: choose Gemini"):
        route(RouteDecision("gemma", "chosen: gemma", fallback=None), signals({"image"}))
    blind = {b: Accepts(a.label, frozenset(), 10**9, 4) for b, a in STANDINS.items()}
    with pytest.raises(InvalidInput, match="image: Gemma stand-in cannot see images; image: Gemini cannot"):
        route(RouteDecision("gemma", "chosen: gemma", fallback="gemini"), signals({"image"}, blind))


# --- through the graph, on the real stand-ins -----------------------------------------------------
@pytest.fixture
def chat(tmp_path: Path, local_backends: Backends) -> Any:
    return build_graph(local_settings(tmp_path), backends=local_backends)


def _graph(tmp_path: Path, local_backends: Backends, **settings: Any) -> tuple[Any, Backends]:
    backends = Backends(local_settings(tmp_path, **settings), **local_backends.shared_standins())
    return build_graph(local_settings(tmp_path, **settings), backends=backends), backends


@pytest.mark.integration
@pytest.mark.parametrize("shape", list(SHAPES))
async def test_an_image_for_gemma_is_read_by_gemini_and_gemma_is_left_alone(
    tmp_path: Path, local_backends: Backends, shape: str
) -> None:
    """The issue's scenario, fixed: the image goes to the backend that can take it, the reason says
    why, the bytes arrive, and Gemma's breaker never hears of it."""
    from graph.context import Services

    settings = local_settings(tmp_path)
    services = Services.build(settings, backends=local_backends)
    g = build_graph(services=services)
    image = png(64, 48)
    for _ in range(4):  # more than the breaker's 3 failures
        out = await g.ainvoke(
            turn("What is in this picture?", SHAPES[shape](image)),
            config={"configurable": {"session_id": f"img-{shape}"}},
        )
        m = meta(out)
        assert (m["backend"], m["route_reason"]) == ("gemini", "image: Gemma stand-in cannot see images")
        assert out["error"] is None
        answer = out["messages"][-1].text
        assert f"[stand-in received image/png 64x48, {len(image):,} bytes, sha256 {digest(image)}]" in answer
    gemma = services.router.breakers["gemma"]
    assert gemma.state == "closed" and gemma._consecutive == 0


@pytest.mark.integration
async def test_a_pdf_on_auto_goes_to_gemini_and_arrives(chat: Any) -> None:
    doc = pdf(2)
    out = await chat.ainvoke(
        {**turn("Summarise this.", standard_block(doc, "application/pdf", "file")), "model": "auto"},
        config={"configurable": {"session_id": "pdf"}},
    )
    assert meta(out)["route_reason"] == "pdf: Gemma stand-in cannot read PDFs"
    assert (
        f"[stand-in received application/pdf, {len(doc):,} bytes, sha256 {digest(doc)}]"
        in out["messages"][-1].text
    )


@pytest.mark.integration
async def test_the_sniffed_type_is_sent_not_the_declared_one(chat: Any) -> None:
    image = png(10, 10)
    out = await chat.ainvoke(
        turn("What is this?", agent_chat_ui_block(image, mime="application/pdf", kind="file")),
        config={"configurable": {"session_id": "sniffed"}},
    )
    assert "[stand-in received image/png 10x10," in out["messages"][-1].text


@pytest.mark.integration
async def test_no_backend_for_the_image_is_refused_before_any_call_and_nothing_is_saved(
    tmp_path: Path, local_backends: Backends
) -> None:
    g, _ = _graph(tmp_path, local_backends, fallback_enabled=False)
    with pytest.raises(InvalidInput, match="image: Gemma stand-in cannot see images, and fallback"):
        await g.ainvoke(turn("Look", standard_block(png())), config={"configurable": {"session_id": "off"}})
    from graph.memory import make_store

    store = make_store(local_settings(tmp_path, fallback_enabled=False))
    assert await store.history("off", "local").aget_window(max_messages=10) == []


@pytest.mark.integration
@pytest.mark.parametrize(
    "block, words",
    [
        (standard_block(b"PK\x03\x04" + b"\x00" * 64), "looks like a ZIP archive"),
        (standard_block(png()[:50]), "does not decode"),
        ({"type": "image", "url": "https://example.com/cat.png"}, "is a link: attach the file itself"),
        ({"type": "image", "base64": "not base64!!", "mime_type": "image/png"}, "not valid base64"),
        ({"type": "audio", "base64": b64(b"RIFF"), "mime_type": "audio/wav"}, "only images and PDFs"),
    ],
    ids=["zip", "truncated", "link", "base64", "audio"],
)
async def test_bad_attachments_are_refused_and_nothing_is_saved(
    tmp_path: Path, local_backends: Backends, block: dict[str, Any], words: str
) -> None:
    g, _ = _graph(tmp_path, local_backends)
    with pytest.raises(InvalidInput, match=words):
        await g.ainvoke(turn("Look", block), config={"configurable": {"session_id": "bad"}})
    from graph.memory import make_store

    assert (
        await make_store(local_settings(tmp_path)).history("bad", "local").aget_window(max_messages=5) == []
    )


@pytest.mark.integration
async def test_too_many_attachments_are_refused(tmp_path: Path, local_backends: Backends) -> None:
    g, _ = _graph(tmp_path, local_backends, attachment_max_count=2)
    with pytest.raises(InvalidInput, match="3 attachments; the limit is 2"):
        await g.ainvoke(
            turn("Look", *[standard_block(png())] * 3), config={"configurable": {"session_id": "n"}}
        )


@pytest.mark.integration
async def test_a_backend_that_refuses_the_image_is_the_users_error_not_the_backends(
    tmp_path: Path, local_backends: Backends
) -> None:
    """Settings that say the llama.cpp stand-in sees images (it does not): its real HTTP 500 "image
    input is not supported" is reported in words, asked once, not answered by Gemini ignoring the
    image, and never counted toward Gemma's breaker, however often it happens."""
    from graph.context import Services

    settings = local_settings(tmp_path, gemma_attachments="image")
    backends = Backends(settings, **local_backends.shared_standins())
    services = Services.build(settings, backends=backends)
    g = build_graph(services=services)
    for i in range(4):
        out = await g.ainvoke(
            turn("Look", standard_block(png())), config={"configurable": {"session_id": "rej"}}
        )
        m = meta(out)
        assert (m["backend"], m["error"], m["fallback"]) == ("gemma", "rejected_input", False)
        assert out["error"].startswith("rejected_input")
        assert "did not accept the attachment" in out["messages"][-1].text
        assert "500" not in out["messages"][-1].text
        assert services.router.breakers["gemma"].state == "closed", f"after {i + 1} refusals"
    assert services.router.breakers["gemma"]._consecutive == 0
    # The question is kept (a failed model call never loses the user's message); the note is not saved.
    window = await services.store.history("rej", "local").aget_window(max_messages=10)
    assert [m.type for m in window] == ["human"] * 4
    # Text still works on Gemma: it was never marked down.
    out = await g.ainvoke({"messages": [HumanMessage("Hello")]}, config={"configurable": {"session_id": "t"}})
    assert meta(out)["backend"] == "gemma" and out["error"] is None


@pytest.mark.integration
async def test_a_gif_is_routed_by_its_type(tmp_path: Path, local_backends: Backends) -> None:
    """Gemini reads PNG, JPEG, WebP, HEIC, HEIF, not GIF (which vLLM's Gemma takes): decided before any
    call. With the stand-ins no backend can: refused in words; with a real Gemma, Gemma reads it."""
    g, _ = _graph(tmp_path, local_backends)
    ask = {**turn("Look", standard_block(gif(), "image/gif")), "model": "gemini"}
    with pytest.raises(
        InvalidInput, match=r"image/gif: Gemini stand-in cannot read image/gif files; image: Gemma"
    ):
        await g.ainvoke(ask, config={"configurable": {"session_id": "gif"}})
    with fault_server("echo") as vllm:
        g, _ = _graph(tmp_path, local_backends, gemma_base_url=vllm.base_url)
        out = await g.ainvoke(ask, config={"configurable": {"session_id": "gif2"}})
        assert (meta(out)["backend"], meta(out)["route_reason"]) == (
            "gemma",
            "image/gif: Gemini stand-in cannot read image/gif files",
        )
        assert vllm.requests == 1


@pytest.mark.integration
def test_the_vertex_standin_refuses_what_vertex_ai_refuses(local_backends: Backends) -> None:
    """The stand-in checks inline data itself, as Vertex AI does (HTTP 400 INVALID_ARGUMENT), and the
    graph takes that error for the user's input, not the backend's health."""
    from google.api_core.exceptions import GoogleAPICallError

    from graph.backends import GenerationParams
    from graph.nodes import rejected_input

    model = local_backends.model("gemini", GenerationParams(0.0, 0.95, 4))
    for block, words in [
        (standard_block(gif(), "image/gif"), "Unsupported MIME type: image/gif"),
        (standard_block(b"\x89PNG\r\n\x1a\nnot really", "image/png"), "Unable to process input image"),
    ]:
        with pytest.raises(GoogleAPICallError, match=words) as caught:
            model.invoke([HumanMessage(content=[{"type": "text", "text": "Look"}, block])])
        assert caught.value.code == 400 and rejected_input(caught.value)


@pytest.mark.integration
async def test_gemma_on_vllm_gets_the_image_as_an_openai_data_url(
    tmp_path: Path, local_backends: Backends
) -> None:
    """A real (non-stand-in) Gemma takes images: the vLLM-shaped server receives an `image_url` part
    whose data URL holds the very bytes, with the sniffed MIME type."""
    with fault_server("echo") as vllm:
        g, _ = _graph(tmp_path, local_backends, gemma_base_url=vllm.base_url)
        image = png(32, 32, "green")
        out = await g.ainvoke(
            turn("What colour?", agent_chat_ui_block(image, mime="image/whatever")),
            config={"configurable": {"session_id": "vllm"}},
        )
        assert (meta(out)["backend"], meta(out)["route_reason"], out["error"]) == (
            "gemma",
            "chosen: gemma",
            None,
        )
        parts = vllm.prompts[-1][-1]["content"]
        urls = [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"]
        assert urls == [f"data:image/png;base64,{b64(image)}"]


# --- memory: attachments outside the message documents ---------------------------------------------
def received_statements(text: str) -> list[str]:
    import re

    return re.findall(r"\[stand-in received ([^\]]+)\]", text)


def _services(tmp_path: Path, local_backends: Backends, **settings: Any) -> Any:
    from graph.context import Services

    return Services.build(local_settings(tmp_path, **settings), backends=local_backends)


@pytest.mark.integration
async def test_memory_keeps_a_reference_and_the_file_beside_it(
    tmp_path: Path, local_backends: Backends
) -> None:
    import sqlite3

    from graph.attachments.blocks import REF_KEY

    services = _services(tmp_path, local_backends)
    g = build_graph(services=services)
    image = png(640, 480, "purple")
    config = {"configurable": {"session_id": "mem"}}
    await g.ainvoke({**turn("What is this?", agent_chat_ui_block(image)), "model": "gemini"}, config=config)
    [question, _answer] = await services.store.history("mem", "local").aget_window(max_messages=10)
    [text, block] = question.content
    assert text == {"type": "text", "text": "What is this?"}
    assert "base64" not in block and "data" not in block
    facts = block["extras"][REF_KEY]
    assert (block["type"], block["mime_type"], facts["size"], facts["name"]) == (
        "image",
        "image/png",
        len(image),
        "shot.png",
    )
    files = [p for p in (tmp_path / "chat-attachments").rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in files] == [image] and files[0].name == hashlib.sha256(image).hexdigest()
    # The message row does not carry the bytes: it stays far under Firestore's 1 MiB per document.
    with sqlite3.connect(tmp_path / "chat.db") as db:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
        dump = "\n".join(str(row) for t in tables for row in db.execute(f"select * from {t}"))  # noqa: S608
    assert b64(image)[:100] not in dump


@pytest.mark.integration
async def test_later_turns_see_the_attachment_again_within_the_budget(
    tmp_path: Path, local_backends: Backends
) -> None:
    services = _services(tmp_path, local_backends, attachment_history_max=1)
    g = build_graph(services=services)
    config = {"configurable": {"session_id": "again"}}
    first, second = png(20, 20, "red"), png(30, 30, "blue")
    await g.ainvoke({**turn("One", standard_block(first)), "model": "gemini"}, config=config)
    await g.ainvoke({**turn("Two", standard_block(second)), "model": "gemini"}, config=config)
    out = await g.ainvoke({"messages": [HumanMessage("Compare them")], "model": "gemini"}, config=config)
    seen = received_statements(out["messages"][-1].text)
    assert seen == [f"image/png 30x30, {len(second):,} bytes, sha256 {digest(second)}"]  # the newest only
    # Gemma's stand-in cannot see images: a text turn there works, the images stay out of its prompt.
    out = await g.ainvoke({"messages": [HumanMessage("And now?")], "model": "gemma"}, config=config)
    assert (meta(out)["backend"], out["error"]) == ("gemma", None)
    assert services.router.breakers["gemma"]._consecutive == 0


@pytest.mark.integration
async def test_a_conversation_with_an_attachment_resumes_after_a_restart(
    tmp_path: Path, local_backends: Backends
) -> None:
    image = png(50, 40, "orange")
    config = {"configurable": {"session_id": "restart"}}
    g = build_graph(services=_services(tmp_path, local_backends))
    await g.ainvoke({**turn("Keep this", standard_block(image)), "model": "gemini"}, config=config)
    again = build_graph(services=_services(tmp_path, local_backends))  # new store objects, same files
    out = await again.ainvoke(
        {"messages": [HumanMessage("What did I send?")], "model": "gemini"}, config=config
    )
    assert received_statements(out["messages"][-1].text) == [
        f"image/png 50x40, {len(image):,} bytes, sha256 {digest(image)}"
    ]


def test_a_reference_finds_only_its_own_users_file(tmp_path: Path) -> None:
    from graph.attachments.store import LocalAttachmentStore

    store = LocalAttachmentStore(tmp_path)
    ref = store.put("alice@example.com", "s1", png())
    assert store.put("alice@example.com", "s1", png()) == ref  # stored once
    assert store.get("alice@example.com", "s1", ref) == png()
    assert store.get("bob@example.com", "s1", ref) is None
    assert store.get("alice@example.com", "s1", "../" * 3 + "etc/passwd") is None
    assert "alice" not in str(next(p for p in tmp_path.rglob("*") if p.is_file()))


@pytest.mark.integration
async def test_a_1_mb_image_is_not_counted_as_message_text(tmp_path: Path, local_backends: Backends) -> None:
    """The message text limit (1,000,000 bytes) is for text: a 1 MB image (1.3 MB of base64) passes, and
    the text limit still holds beside it."""
    import os

    buf = io.BytesIO()
    Image.frombytes("RGB", (577, 577), os.urandom(577 * 577 * 3)).save(buf, "PNG")
    image = buf.getvalue()
    assert len(image) > 1_000_000
    g = build_graph(services=_services(tmp_path, local_backends))
    out = await g.ainvoke(
        {**turn("Describe it.", standard_block(image)), "model": "gemini"},
        config={"configurable": {"session_id": "big"}},
    )
    assert received_statements(out["messages"][-1].text) == [
        f"image/png 577x577, {len(image):,} bytes, sha256 {digest(image)}"
    ]
    with pytest.raises(InvalidInput, match=r"the message is 1,000,0\d\d bytes long; the limit is 1,000,000"):
        await g.ainvoke(
            turn("x" * 1_000_001, standard_block(png())), config={"configurable": {"session_id": "t"}}
        )


@pytest.mark.integration
async def test_the_facade_says_what_happened(tmp_path: Path, local_backends: Backends) -> None:
    """`ChatClient.stream_turn` (what every way in uses) passes content blocks through: a refusal is a
    `Done("failed")` in words, an answer says who read the image and why."""
    from graph.client import ChatClient

    client = ChatClient(_services(tmp_path, local_backends, fallback_enabled=False))
    image = png(12, 12)

    async def ask(model: str) -> Any:
        message = HumanMessage(content=[{"type": "text", "text": "See?"}, agent_chat_ui_block(image)])
        return [e async for e in client.stream_turn("local", "facade", [message], {"model": model})][-1]

    refused = await ask("gemma")
    assert refused.kind == "failed"
    assert refused.text == (
        "image: Gemma stand-in cannot see images, and fallback to another model is off: "
        "choose Gemini stand-in"
    )
    done = await ask("gemini")
    assert done.kind == "answer" and done.answer.backend == "gemini"
    assert f"image/png 12x12, {len(image):,} bytes" in done.text


def test_earlier_attachments_stay_within_the_backends_bytes() -> None:
    from graph.attachments.blocks import fit_content

    content = [{"type": "text", "text": "two"}, standard_block(png(10, 10)), standard_block(png(20, 20))]
    small, big = len(png(10, 10)), len(png(20, 20))
    fitted, kept, used = fit_content(content, frozenset({"image"}), budget=5, max_bytes=big)
    assert (kept, used) == (1, big)  # the newest fits; the older would go over
    assert fitted[1]["type"] == "text" and "[attachment not shown again: image/png" in fitted[1]["text"]
    assert fitted[2]["base64"] == b64(png(20, 20))
    assert fit_content(content, frozenset({"image"}), budget=5, max_bytes=big + small)[1:] == (2, big + small)
    assert fit_content(content, frozenset(), budget=5)[1:] == (0, 0)


@pytest.mark.integration
async def test_an_attachment_store_that_cannot_write_is_reported_like_memory(
    tmp_path: Path, local_backends: Backends
) -> None:
    """The directory cannot be written (a full or read-only disk): the answer is still shown and the
    output says the turn could not be saved, as for a memory outage; nothing raises."""
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the directory should be")
    g = build_graph(services=_services(tmp_path, local_backends, attachments_path=blocked))
    out = await g.ainvoke(
        {**turn("Look", standard_block(png())), "model": "gemini"},
        config={"configurable": {"session_id": "ro"}},
    )
    assert "[stand-in received image/png 64x48" in out["messages"][-1].text
    assert out["error"] == "the turn could not be saved: the conversation store is unreachable"
