"""
The yardstick: the obvious minimal relay a Python developer would write with aiohttp.

    python -m relayd.bench.reference_aiohttp [--port 0] [--heartbeat 25]

One ``dict[id] -> WebSocketResponse``; ``GET /ws?id=`` registers a
connection (a newer one with the same id replaces the older, closed with
4000), ``POST /send-message`` takes one message
(``{"receiver_id": …, "content": …}`` or ``{"broadcast": true, "content": …}``;
no batches) and writes it to the receiver's socket, ``GET /health-check``
counts the connections. Stdlib ``json``, aiohttp's defaults (its C parser,
the stdlib asyncio loop, no access log configured). It keeps nothing for
offline clients and checks no tokens: the benchmark compares relayd against
what it would cost to write the relay by hand, not against a peer.

It prints ``listening on 127.0.0.1:PORT`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web

CLIENTS = web.AppKey("clients", dict)
HEARTBEAT = web.AppKey("heartbeat", float)


async def websocket(request: web.Request) -> web.StreamResponse:
    """``GET /ws?id=``: hold the connection in the dict until it closes."""
    client_id = request.query.get("id", "")
    if not client_id:
        raise web.HTTPBadRequest(text='{"error": "bad_id"}', content_type="application/json")
    ws = web.WebSocketResponse(heartbeat=request.app[HEARTBEAT] or None)
    await ws.prepare(request)
    clients = request.app[CLIENTS]
    older = clients.get(client_id)
    clients[client_id] = ws
    if older is not None:
        await older.close(code=4000, message=b"replaced")
    try:
        async for _ in ws:
            pass
    finally:
        if clients.get(client_id) is ws:
            del clients[client_id]
    return ws


def _error(status: int, code: str) -> web.Response:
    return web.json_response({"error": code}, status=status)


async def send_message(request: web.Request) -> web.Response:
    """``POST /send-message``: one message to one id, or a broadcast."""
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "invalid_json")
    if not isinstance(body, dict) or "content" not in body:
        return _error(400, "invalid_message")
    clients = request.app[CLIENTS]
    frame = {"type": "message", "sender_id": body.get("sender_id"), "receiver_id": body.get("receiver_id"),
             "content": body["content"]}
    if body.get("broadcast") is True:
        text = json.dumps(frame)
        for ws in list(clients.values()):
            await ws.send_str(text)
        return web.json_response({"sent": len(clients)})
    receiver = body.get("receiver_id")
    if not isinstance(receiver, str):
        return _error(400, "invalid_message")
    ws = clients.get(receiver)
    if ws is None:
        return web.json_response({"error": "not_delivered", "sent": [], "dropped": [receiver]}, status=404)
    await ws.send_str(json.dumps(frame))
    return web.json_response({"sent": [receiver], "dropped": []})


async def health_check(request: web.Request) -> web.Response:
    """``GET /health-check``: how many ids are connected."""
    return web.json_response({"status": "ok", "clients": len(request.app[CLIENTS])})


def application(heartbeat: float) -> web.Application:
    """The three routes, with ``heartbeat`` seconds between pings."""
    app = web.Application()
    app[CLIENTS] = {}
    app[HEARTBEAT] = heartbeat
    app.router.add_get("/ws", websocket)
    app.router.add_post("/send-message", send_message)
    app.router.add_get("/health-check", health_check)
    return app


async def serve(port: int, heartbeat: float) -> None:
    """Listen on 127.0.0.1:``port`` until cancelled."""
    runner = web.AppRunner(application(heartbeat))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    host, bound = runner.addresses[0][:2]
    print(f"listening on {host}:{bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv=None) -> None:
    """Run the reference relay in the foreground."""
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--heartbeat", type=float, default=25.0, help="seconds between pings (aiohttp heartbeat); 0 disables")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.port, args.heartbeat))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
