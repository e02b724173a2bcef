"""Which of the configured Slack user groups someone belongs to, cached for a few minutes.

Only user groups named in ``Settings.groups`` are looked up (``usergroups.users.list``, scope
``usergroups:read``). If Slack cannot answer, the last membership read is used, or none at all:
the ACL fails closed, and the log says why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from slack_sdk.web.async_client import AsyncWebClient

from bot.slack.calls import call_slack
from kbot.errors import ChatError

log = logging.getLogger(__name__)
TTL_S = 300.0


class SlackDirectory:
    def __init__(
        self,
        client: AsyncWebClient,
        usergroups: Sequence[str],
        *,
        ttl_s: float = TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._usergroups = list(usergroups)
        self._ttl = ttl_s
        self._clock = clock
        self._members: dict[str, tuple[float, frozenset[str]]] = {}

    async def usergroups_of(self, user: str) -> tuple[str, ...]:
        """The configured user groups ``user`` belongs to."""
        return tuple([group for group in self._usergroups if user in await self._members_of(group)])

    async def _members_of(self, group: str) -> frozenset[str]:
        cached = self._members.get(group)
        if cached and cached[0] > self._clock():
            return cached[1]
        try:
            response = await call_slack(
                "usergroups.users.list", self._client.usergroups_users_list(usergroup=group)
            )
            members = frozenset(str(u) for u in response.get("users") or [])
        except ChatError as exc:
            log.warning(
                "cannot read members of Slack user group %s (%s); its ACL groups are not granted", group, exc
            )
            return cached[1] if cached else frozenset()
        self._members[group] = (self._clock() + self._ttl, members)
        return members
