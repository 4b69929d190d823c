"""Sends one request through the official `vastai` client (PyPI), as a caller of an endpoint's /route/ would.

Usage: python vast_client.py --autoscaler URL --route /generate/sync --payload FILE [--stream] [--session]
       [--timeout S]
Prints one JSON object: {"status", "ok", "response"} ("response" is the list of lines with --stream).
With --session the request goes through a session opened with the client's API (Endpoint.session), which is
then checked and closed; "session" reports {"id", "open_before_close", "open_after_close"}.
Without --autoscaler, VAST_DEBUG_WORKER_URL must be set (the client then skips /route/).
"""
import argparse
import asyncio
import json
import sys

from vastai import Serverless
from vastai.serverless.client.endpoint import Endpoint

API_KEY = "local-test-key"


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--autoscaler")
    ap.add_argument("--route", required=True)
    ap.add_argument("--payload", required=True)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--session", action="store_true")
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()
    payload = json.load(open(args.payload))
    kwargs = {"autoscaler_url": args.autoscaler} if args.autoscaler else {}
    client = Serverless(api_key=API_KEY, **kwargs)
    # Without this the client downloads a certificate from console.vast.ai on first use.
    client._ssl_context = False
    async with client:
        # Built directly: get_endpoint() would ask the Vast console.
        endpoint = Endpoint(client, name="comfyui-local", id=1, api_key=API_KEY)
        session = None
        if args.session:
            session = await endpoint.session(cost=100, lifetime=30, timeout=args.timeout)
            res = await session.request(args.route, payload, stream=args.stream)
        else:
            res = await endpoint.request(args.route, payload, stream=args.stream, timeout=args.timeout)
        response = res.get("response")
        if args.stream and res.get("ok"):
            lines = []
            async for item in response:
                lines.append(item)
            response = lines
        out = {"status": res.get("status"), "ok": res.get("ok"), "response": response}
        if session is not None:
            open_before = await session.is_open()
            await session.close()
            try:
                open_after = bool(await session.is_open())
            except Exception:
                open_after = False
            out["session"] = {
                "id": session.session_id,
                "open_before_close": bool(open_before),
                "open_after_close": open_after,
            }
        json.dump(out, sys.stdout)


asyncio.run(main())
