"""Slack ack latency: 50 concurrent signed ``app_mention`` events posted to a running ``kbot serve``
(real bundled model generating answers, streamed natively with chat.startStream/appendStream)
vs the same burst to a bare aiohttp handler that only checks the signature — both on loopback,
in one run. Goal: kbot's p99 < 100 ms (Slack
retries after 3 s).

    python bench/slack_ack.py [--concurrent N] [--rounds R] [--gap S]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_slack import SECRET, event_body, sign

BARE_SERVER = """
import hashlib, hmac, sys, time
from aiohttp import web
secret = sys.argv[2].encode()
async def events(request):
    body = await request.read()
    ts = request.headers["X-Slack-Request-Timestamp"]
    expected = "v0=" + hmac.new(secret, b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    signature = request.headers["X-Slack-Signature"]
    if abs(time.time() - int(ts)) > 300 or not hmac.compare_digest(expected, signature):
        return web.Response(status=401)
    return web.Response(status=200)
app = web.Application()
app.router.add_post("/slack/events", events)
app.router.add_get("/healthz", lambda r: web.json_response({"status": "ok"}))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_healthy(
    url: str, proc: subprocess.Popen[bytes], timeout: float = 300, path: str = "/healthz"
) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with status {proc.returncode}")
            try:
                async with session.get(url + path) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    raise SystemExit("server did not become healthy")


async def burst(url: str, n: int, start: int) -> list[float]:
    """Post ``n`` signed mentions at once; each one's time to its HTTP response, in ms."""
    connector = aiohttp.TCPConnector(limit=n + 10)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> float:
            event = {
                "type": "app_mention",
                "user": f"U{i % 7}",
                "text": "<@UBOT> How many days of sick leave do I get?",
                "ts": f"17000{start + i:05d}.000100",
                "channel": "C1",
            }
            body = event_body(event, f"EvBENCH{start + i}")
            headers = {"Content-Type": "application/json", **sign(body)}
            began = time.perf_counter()
            async with session.post(url + "/slack/events", data=body.encode(), headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise SystemExit(f"unexpected status {r.status}")
            return (time.perf_counter() - began) * 1000

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


async def measure(
    args: argparse.Namespace, kurl: str, burl: str, calls: Any
) -> tuple[list[float], list[float]]:
    # Get the model generating before measuring, then keep it busy throughout.
    await burst(kurl, 1, 0)
    while not await calls("chat.appendStream"):  # tokens are streaming into Slack
        await asyncio.sleep(0.05)
    kbot_ms: list[float] = []
    bare_ms: list[float] = []
    updates_before = await calls("chat.appendStream")
    for r in range(args.rounds):  # interleaved, so both see the same machine state
        k = await burst(kurl, args.concurrent, 1 + r * args.concurrent)
        b = await burst(burl, args.concurrent, 1 + r * args.concurrent)
        print(f"  round {r + 1}: kbot p99 {p99(k):.1f} ms, bare p99 {p99(b):.1f} ms")
        kbot_ms += k
        bare_ms += b
        await asyncio.sleep(args.gap)  # spread the bursts over the answers being generated
    updates_after = await calls("chat.appendStream")
    print(
        f"  chat.appendStream calls (answers streaming natively): {updates_before} before, "
        f"{updates_after} after the bursts; chat.update: {await calls('chat.update')}"
    )
    return kbot_ms, bare_ms


async def main(args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="kbot-bench-slack-"))
    print(f"server log: {data / 'server.log'}")
    sport = free_port()
    # Every server in its own process: the measuring client shares its event loop with none of them.
    slack = subprocess.Popen([sys.executable, "-m", "tests.fake_slack", str(sport)], cwd=ROOT)
    slack_url = f"http://127.0.0.1:{sport}"

    async def calls(method: str) -> int:
        async with aiohttp.ClientSession() as session, session.get(slack_url + "/_calls") as r:
            return int((await r.json()).get(method, 0))

    env = {
        **os.environ,
        "KBOT_DATA_DIR": str(data),
        "KBOT_SLACK_SIGNING_SECRET": SECRET,
        "KBOT_SLACK_BOT_TOKEN": "xoxb-bench",
        "KBOT_SLACK_API_URL": slack_url + "/api/",
        "KBOT_MAX_NEW_TOKENS": "64",
        "KBOT_RATE_LIMIT_PER_MINUTE": "0",
        # The model's tokens stream into Slack as they come (strict grounding sends checked text once).
        "KBOT_GROUNDING": "off",
    }
    kbot = str(Path(sys.executable).parent / "kbot")
    handbook = str(ROOT / "examples" / "handbook")
    subprocess.run([kbot, "ingest", handbook, "-c", "handbook"], env=env, check=True, capture_output=True)
    kport, bport = free_port(), free_port()
    with open(data / "server.log", "wb") as server_log:
        server = subprocess.Popen([kbot, "serve", "--port", str(kport)], env=env, stderr=server_log)
        bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(bport), SECRET])
        try:
            kurl, burl = f"http://127.0.0.1:{kport}", f"http://127.0.0.1:{bport}"
            await wait_healthy(slack_url, slack, path="/_calls")
            await wait_healthy(kurl, server)
            await wait_healthy(burl, bare)
            kbot_ms, bare_ms = await measure(args, kurl, burl, calls)
        finally:
            for proc in (server, bare, slack):
                proc.send_signal(signal.SIGTERM)
            for proc in (server, bare, slack):
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
    k50, k99, b50, b99 = statistics.median(kbot_ms), p99(kbot_ms), statistics.median(bare_ms), p99(bare_ms)
    print(f"{args.rounds} bursts of {args.concurrent} concurrent signed app_mention events on loopback")
    print(f"  kbot serve (bolt, kbot):      p50 {k50:.1f} ms  p99 {k99:.1f} ms  max {max(kbot_ms):.1f} ms")
    print(f"  bare aiohttp signature check: p50 {b50:.1f} ms  p99 {b99:.1f} ms  max {max(bare_ms):.1f} ms")
    verdict = "met" if k99 < 100 else "NOT met"
    print(f"  kbot / bare at p99: {k99 / b99:.2f}x   goal: kbot p99 < 100 ms -> {verdict}")
    print(
        f"RESULT ack_p99_ms={k99:.1f} ack_p50_ms={k50:.1f} bare_p99_ms={b99:.1f} p99_vs_bare={k99 / b99:.2f} "
        f"concurrent={args.concurrent} goal_p99_ms=100 streaming=native"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrent", type=int, default=50, help="events per burst (default 50)")
    parser.add_argument("--rounds", type=int, default=5, help="bursts per server (default 5)")
    parser.add_argument("--gap", type=float, default=1.5, help="seconds between bursts (default 1.5)")
    asyncio.run(main(parser.parse_args()))
