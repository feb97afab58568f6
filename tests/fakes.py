"""Test doubles for unit tests of graph logic: an in-memory store and scripted chat models.

Integration tests use the real stores and the real local model servers; these exist so that node and
routing logic can be checked in milliseconds, including failures that real servers rarely produce.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage

from graph.backends import BackendName, Backends, GenerationParams
from graph.memory.contract import ChatHistory, ConversationStore, Page
from graph.settings import Settings


class InMemoryHistory(ChatHistory):
    def __init__(self, store: InMemoryStore, session_id: str, user_id: str) -> None:
        self._store, self.session_id, self.user_id = store, session_id, user_id

    def _rows(self) -> list[BaseMessage]:
        # Keyed by (user, id), as the real stores are: another user's id is another conversation.
        return self._store.rows.setdefault((self.user_id, self.session_id), [])

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        return list(self._rows())

    def get_window(self, max_messages: int | None = None, max_tokens: int | None = None) -> list[BaseMessage]:
        rows = self._rows()
        return list(rows[-max_messages:] if max_messages else rows)

    async def aget_window(
        self, max_messages: int | None = None, max_tokens: int | None = None
    ) -> list[BaseMessage]:
        return self.get_window(max_messages, max_tokens)

    async def aget_page(self, before: int | None = None, limit: int = 50) -> Page:
        return Page(self.messages, None)

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        rows = self._rows()
        ids = {m.id for m in rows}
        rows.extend(m for m in messages if m.id not in ids)

    async def aadd_messages(self, messages: Sequence[BaseMessage], *, model: str | None = None) -> None:
        if self._store.fail_writes:
            from graph.memory.contract import MemoryUnavailable

            raise MemoryUnavailable("store down (test)")
        self.add_messages(messages)

    def clear(self) -> None:
        self._rows().clear()

    async def aget_messages(self) -> list[BaseMessage]:
        return self.messages

    async def aclear(self) -> None:
        self.clear()

    async def atruncate(self, from_message_id: str) -> int:
        rows = self._rows()
        ids = [m.id for m in rows]
        if from_message_id not in ids:
            return 0
        cut = ids.index(from_message_id)
        removed = len(rows) - cut
        del rows[cut:]
        return removed


class InMemoryStore(ConversationStore):
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], list[BaseMessage]] = {}  # by (user, conversation id)
        self.fail_writes = False

    def of(self, session_id: str, user_id: str = "local") -> list[BaseMessage]:
        """What is stored for that user's conversation (the settings' default user unless named)."""
        return self.rows.get((user_id, session_id), [])

    def history(self, session_id: str, user_id: str) -> InMemoryHistory:
        return InMemoryHistory(self, session_id, user_id)

    async def alist_conversations(self, user_id: str, limit: int = 20, cursor: str | None = None) -> Any:
        raise NotImplementedError

    async def aget_conversation(self, session_id: str, user_id: str) -> Any:
        raise NotImplementedError

    async def arename(self, session_id: str, user_id: str, title: str) -> None:
        raise NotImplementedError

    async def adelete(self, session_id: str, user_id: str) -> None:
        raise NotImplementedError

    async def aping(self) -> None:
        return None


class FailingChatModel(GenericFakeChatModel):
    """Raises before its first token, or after `tokens_before_failure` tokens."""

    tokens_before_failure: int = 0

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        produced = 0
        for chunk in super()._stream(*args, **kwargs):
            if produced >= self.tokens_before_failure:
                break
            produced += 1
            yield chunk
        raise ConnectionError("backend went away (test)")


class ScriptedBackends(Backends):
    """Backends whose models are given per name; records the prompts each received."""

    def __init__(self, settings: Settings, models: dict[BackendName, Any]) -> None:
        super().__init__(settings)
        self._scripted = models
        self.calls: list[BackendName] = []

    def model(self, name: BackendName, params: GenerationParams) -> Any:
        self.calls.append(name)
        factory = self._scripted[name]
        return factory() if callable(factory) else factory

    async def amodel(self, name: BackendName, params: GenerationParams) -> Any:
        return self.model(name, params)


def fake_model(*answers: str) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([AIMessage(a) for a in answers]))
