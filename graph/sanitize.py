"""Chat-template control tokens in user text: shown as typed, never read by the model as control tokens.

The backends tokenize text with "special token" parsing on: llama.cpp turns `<|im_start|>` in a message
into its control token (id 1 of SmolLM2, the embedded stand-in), and vLLM's Hugging Face tokenizer does
the same with Gemma 3's `<start_of_turn>`. A user could then forge turns (a fake system or model turn)
inside their own prompt. `neutralise` breaks every control-token string with a zero-width space after
its first character: the text reads the same, but no tokenizer matches the token any more. It is applied
to the user's and the system prompt's text on the way to the model only (`graph/nodes.py::_prompt`); the
stored text stays as typed.

The strings, from the backends' tokenizers:

- SmolLM2-135M-Instruct (the embedded llama.cpp stand-in; its GGUF's control tokens, ids 0-16):
  `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<repo_name>`, `<reponame>`, `<file_sep>`,
  `<filename>`, `<gh_stars>`, `<issue_start>`, `<issue_comment>`, `<issue_closed>`, `<jupyter_start>`,
  `<jupyter_text>`, `<jupyter_code>`, `<jupyter_output>`, `<jupyter_script>`, `<empty_output>`;
- Gemma 3 (`tokenizer_config.json` of google/gemma-3-*-it, special added tokens): `<pad>`, `<eos>`,
  `<bos>`, `<unk>`, `<mask>`, `[multimodal]`, `[@BOS@]`, `<start_of_turn>`, `<end_of_turn>`,
  `<start_of_image>`, `<end_of_image>`, `<image_soft_token>`, `<unused0>` ... `<unusedN>`;
- any `<|name|>` (ChatML, Llama 3's `<|begin_of_text|>`, `<|eot_id|>`, `<|start_header_id|>`, ...), so a
  vLLM serving another model is covered too.

Matching ignores case (a tokenizer does not, so this only errs towards breaking a harmless string).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage

ZWSP = "\u200b"  # zero-width space: invisible, and no tokenizer's control token contains it

SMOLLM2_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<repo_name>",
    "<reponame>",
    "<file_sep>",
    "<filename>",
    "<gh_stars>",
    "<issue_start>",
    "<issue_comment>",
    "<issue_closed>",
    "<jupyter_start>",
    "<jupyter_text>",
    "<jupyter_code>",
    "<jupyter_output>",
    "<jupyter_script>",
    "<empty_output>",
)
GEMMA3_TOKENS = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "[multimodal]",
    "[@BOS@]",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)
CONTROL_TOKENS = SMOLLM2_TOKENS + GEMMA3_TOKENS

_PATTERN = re.compile(
    "|".join(
        [
            *(re.escape(t) for t in sorted(CONTROL_TOKENS, key=len, reverse=True)),
            r"<unused\d{1,6}>",  # Gemma's reserved tokens
            r"<\|[^|<>\s]{1,64}\|>",  # <|anything|>: ChatML, Llama 3, ...
        ]
    ),
    re.IGNORECASE,
)


def neutralise(text: str) -> str:
    """`text` with every control-token string broken by a zero-width space after its first character."""
    if "<" not in text and "[" not in text:
        return text
    return _PATTERN.sub(lambda m: m.group()[0] + ZWSP + m.group()[1:], text)


def has_control_token(text: str) -> bool:
    """Does `text` hold a control-token string that `neutralise` would break?"""
    return _PATTERN.search(text) is not None


def _content(content: Any) -> Any:
    if isinstance(content, str):
        return neutralise(content)
    if isinstance(content, list):
        return [
            {**b, "text": neutralise(b["text"])}
            if isinstance(b, dict) and isinstance(b.get("text"), str)
            else neutralise(b)
            if isinstance(b, str)
            else b
            for b in content
        ]
    return content


def for_model(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """The prompt as sent: user, system and tool-result messages neutralised (copies; the stored ones are
    untouched), answers as they are."""
    return [
        m.model_copy(update={"content": _content(m.content)}) if m.type in ("human", "system", "tool") else m
        for m in messages
    ]
