"""A stand-in for ``server.PromptServer``: the part the executor and stock nodes talk to, recording every event."""

from __future__ import annotations

from typing import Any


class RecordingServer:
    """What ``execution.PromptExecutor`` and stock nodes call on the server; each event is kept in ``events``."""

    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets_metadata: dict[str, Any] = {}
        self.node_replace_manager: Any = None  # ComfyUI's own NodeReplaceManager, set by install()
        self.events: list[tuple[str, Any]] = []

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        self.events.append((event, data))

    def queue_updated(self) -> None:
        pass

    def send_progress_text(self, text: bytes | str, node_id: str, sid: str | None = None) -> None:
        # The real server packs this into a binary websocket frame; recorded here as text.
        self.send_sync("progress_text", (node_id, text.decode() if isinstance(text, bytes) else text), sid)

    def install(self) -> None:
        """Become ``server.PromptServer.instance`` (which main.py sets when it starts the web server).

        Stock nodes use it: GetImageSize calls send_progress_text, and the built-in node replacements
        register with its node_replace_manager while the extra nodes load, so this must run before them.
        An instance that already exists (a real server in this process) is left alone."""
        import server
        from app.node_replace_manager import NodeReplaceManager

        self.node_replace_manager = NodeReplaceManager()
        if getattr(server.PromptServer, "instance", None) is None:
            server.PromptServer.instance = self
