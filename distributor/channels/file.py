"""The ``file`` channel: writes each email as an .eml file and each post as a .json file.

The embedded default and the stand-in for any platform while trying things out. Files are
written atomically under a name made from the edition, the recipient and the message, so
sending the same delivery again replaces the file instead of adding a second one.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from distributor.channels.base import Channel, ChannelKind
from distributor.exceptions import PermanentDeliveryError, TransientDeliveryError
from distributor.models import DeliveryResult, Message
from distributor.plugins import PluginOptions
from distributor.rendering.email import to_mime

PLATFORM_LIMITS: dict[str, int | None] = {
    "x": 280,
    "mastodon": 500,
    "bluesky": 300,
    "telegram": 4096,
    "discord": 2000,
    "slack": 3000,  # the text of one section block
    "webhook": None,
}

# A local write that failed for a passing reason is tried again soon, not after a long backoff
# that would not help within a run; `distributor retry` sends it later.
LOCAL_RETRY_AFTER = 0.1

_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]+")


def _file_name(*parts: str) -> str:
    return "_".join(_UNSAFE.sub("-", part).strip("-") for part in parts if part)[:200]


class FileChannel(Channel):
    """Writes messages into a folder instead of sending them."""

    class Options(Channel.Options):
        path: str = Field(description="The folder, relative to distributor.yaml.")
        writes: Literal["email", "post"] = Field(
            default="email", description="Email digests (.eml) or social posts (.json)."
        )
        platform: (
            Literal["x", "mastodon", "bluesky", "telegram", "discord", "slack", "webhook"] | None
        ) = Field(default=None, description="For posts: whose rules (template, length) to follow.")

    options: Options
    kind: ClassVar[ChannelKind] = "email"

    @classmethod
    def message_kind_for(cls, options: PluginOptions) -> ChannelKind:
        assert isinstance(options, FileChannel.Options)
        return options.writes

    @property
    def platform_name(self) -> str:
        return self.options.platform or ""

    @property
    def length_limit(self) -> int | None:
        return PLATFORM_LIMITS.get(self.options.platform or "")

    @property
    def folder(self) -> Path:
        return (self.root / self.options.path).resolve()

    def path_of(self, message: Message) -> Path:
        """Where ``message`` is written: the same name every time it is sent."""
        if self.message_kind == "email":
            name = _file_name(message.edition, message.recipient, message.key) + ".eml"
        else:
            name = _file_name(message.edition, message.key) + ".json"
        return self.folder / name

    def confirm(self, message: Message) -> DeliveryResult | None:
        """Delivered if the file is there: it is written whole (renamed into place) or not."""
        target = self.path_of(message)
        return DeliveryResult(remote_id=str(target)) if target.is_file() else None

    def send(self, message: Message) -> DeliveryResult:
        if self.message_kind == "email":
            data = bytes(to_mime(message))
        else:
            post = {
                "channel": self.name,
                "platform": self.options.platform,
                "edition": message.edition,
                "text": message.text,
                "length": self.count_length(message.text),
                "max_length": self.length_limit,
                "article_ids": list(message.article_ids),
                **dict(message.payload),
            }
            data = (json.dumps(post, ensure_ascii=False, indent=2) + "\n").encode()
        target = self.path_of(message)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temp, target)
        except PermissionError as exc:
            raise PermanentDeliveryError(f"cannot write {target}: {exc.strerror}") from exc
        except OSError as exc:  # a full disk, say: may pass
            raise TransientDeliveryError(
                f"cannot write {target}: {exc.strerror}", retry_after=LOCAL_RETRY_AFTER
            ) from exc
        return DeliveryResult(remote_id=str(target))
