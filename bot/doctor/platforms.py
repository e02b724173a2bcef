"""``kbot doctor``'s checks of the chat platforms: Slack's bot token, Teams' Azure AD credentials."""

from __future__ import annotations

from bot.doctor.findings import Finding, Probe, in_thread
from kbot.urls import shown_url


async def slack(p: Probe) -> str:
    s = p.settings
    if not (s.slack_bot_token or s.slack_signing_secret or s.slack_app_token):
        raise Finding("off", "not configured (KBOT_SLACK_SIGNING_SECRET, KBOT_SLACK_BOT_TOKEN)")
    token = "Copy the Bot User OAuth Token (xoxb-…) from OAuth & Permissions into KBOT_SLACK_BOT_TOKEN."
    if s.slack_bot_token is None:
        raise Finding("fail", "KBOT_SLACK_BOT_TOKEN is not set, so Slack stays off", token)
    from aiohttp import ClientError
    from slack_sdk.errors import SlackApiError

    from bot.slack.calls import slack_client  # the server's own client

    try:
        auth = await slack_client(s).auth_test()
    except SlackApiError as exc:
        refused = f"Slack refused the bot token: {exc.response.get('error')}"
        raise Finding("fail", refused, f"{token} (Reinstall the app if it was revoked.)") from exc
    except (ClientError, OSError) as exc:
        reach = "Allow outbound HTTPS to slack.com, or correct KBOT_SLACK_API_URL."
        raise Finding("fail", f"cannot reach Slack at {shown_url(s.slack_api_url)}: {exc}", reach) from exc
    who = f"signed in as @{auth.get('user')} in {auth.get('team')} ({auth.get('team_id')})"
    if s.slack_signing_secret is None:
        secret = "Set KBOT_SLACK_SIGNING_SECRET from the app's Basic Information page."
        raise Finding("fail", f"{who}, but without KBOT_SLACK_SIGNING_SECRET Slack stays off", secret)
    if s.slack_app_token is not None:  # checked by `kbot serve --slack-socket-mode` when it connects
        who += "; app-level token set for Socket Mode"
    return who


async def teams(p: Probe) -> str:
    s = p.settings
    if not s.teams_app_id:
        raise Finding("off", "not configured (KBOT_TEAMS_APP_ID, KBOT_TEAMS_APP_PASSWORD)")
    from botbuilder.integration.aiohttp import ConfigurationServiceClientCredentialFactory
    from botframework.connector.auth import AuthenticationConstants as Auth

    from bot.teams.app import _BotConfig  # the server's own reading of the settings, not a copy

    factory = p.teams_credentials or ConfigurationServiceClientCredentialFactory(_BotConfig(s))
    app = f"app {s.teams_app_id} ({f'tenant {s.teams_tenant_id}' if s.teams_tenant_id else 'multi-tenant'})"
    scope, login = Auth.TO_CHANNEL_FROM_BOT_OAUTH_SCOPE, Auth.TO_CHANNEL_FROM_BOT_LOGIN_URL_PREFIX
    try:  # the token CloudAdapter asks for before it sends anything to the Bot Framework
        credentials = await factory.create_credentials(s.teams_app_id, scope, login, True)
        await in_thread(credentials.get_access_token)
    except Exception as exc:  # botbuilder raises bare Exception; MSAL ValueError, requests errors
        check = "Check KBOT_TEAMS_APP_PASSWORD (a current client secret), KBOT_TEAMS_TENANT_ID (single-tenant"
        fix = f"{check} apps) and HTTPS to login.microsoftonline.com."
        raise Finding("fail", f"{app} got no token from Azure AD: {exc}", fix) from exc
    return f"{app} got a token from Azure AD"
