"""Who may ask what, where: channel policies and askers' ACL groups, from :class:`Settings`.

Keys are platform-qualified (``slack:C0123``, ``slack:U0123``); see ``Settings.channels`` and
``Settings.groups``. The most specific key wins for a channel; for groups every matching key adds.
"""

from __future__ import annotations

from collections.abc import Iterable

from kbot.policies import ChannelPolicy
from kbot.settings import Settings


class Access:
    def __init__(self, settings: Settings) -> None:
        self._channels = settings.channels
        self._groups = settings.groups

    def policy(self, platform: str, channel: str, *broader: str) -> ChannelPolicy:
        """The policy of ``channel``, else of the first ``broader`` place listed (a Teams team)."""
        for key in (*(f"{platform}:{place}" for place in (channel, *broader)), f"{platform}:*", "*"):
            if key in self._channels:
                return self._channels[key]
        return ChannelPolicy()

    def groups(self, platform: str, identities: Iterable[str]) -> list[str]:
        """ACL groups of someone known on ``platform`` by ``identities`` (user id, user-group ids…)."""
        keys = [f"{platform}:{i}" for i in identities] + [f"{platform}:*", "*"]
        return sorted({group for key in keys for group in self._groups.get(key, [])})

    def group_ids(self, platform: str, prefix: str) -> list[str]:
        """Ids configured for ``platform`` that start with ``prefix`` (Slack user groups: ``S``)."""
        start = f"{platform}:{prefix}"
        return sorted(key.split(":", 1)[1] for key in self._groups if key.startswith(start))
