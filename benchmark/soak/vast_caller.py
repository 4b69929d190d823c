"""The soak's caller through the official `vastai` client (PyPI): one long-lived process, many requests at once.

Usage: python vast_caller.py --autoscaler URL --api-key KEY
Reads one JSON object a line on stdin and answers each with one JSON line on stdout, in completion order, matched
by its "n":
  {"n", "route", "payload", "timeout", "stream"?}  -> {"n", "status", "ok", "response", "url"}
  {"n", "route", "payload", "timeout", "session": {"lifetime", "on_close_route", "on_close_payload"}}
      -> as above, plus "session": {"id", "url", "closed", "close_error"?}: the request is sent in a session opened
         with the client's API (Endpoint.session), which is then closed (Session.close's own call, so that a
         failure to close is reported, not logged away).
A request the client gave up on answers {"n", "error"}. With --stream "response" is the list of lines. The process
ends when stdin closes, once the requests in flight have answered.
"""
import argparse
import asyncio
import json
import sys

from vastai import Serverless
from vastai.serverless.client.endpoint import Endpoint


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def one(endpoint: Endpoint, msg: dict) -> dict:
    timeout = float(msg.get("timeout", 300))
    route, payload, stream = msg["route"], msg["payload"], bool(msg.get("stream"))
    spec = msg.get("session")
    out: dict = {"n": msg["n"]}
    session = None
    try:
        if spec is not None:
            session = await endpoint.session(
                cost=100,
                lifetime=spec.get("lifetime", 60),
                on_close_route=spec.get("on_close_route"),
                on_close_payload=spec.get("on_close_payload"),
                timeout=timeout,
            )
            out["session"] = {"id": session.session_id, "url": session.url, "closed": False}
            # Session.request takes no timeout (the client retries a 5xx on the session's worker for ever).
            res = await asyncio.wait_for(session.request(route, payload, stream=stream), timeout)
        else:
            res = await endpoint.request(route, payload, stream=stream, timeout=timeout)
        response = res.get("response")
        if stream and res.get("ok"):
            lines = []
            async for item in response:
                lines.append(item)
            response = lines
        out.update(status=res.get("status"), ok=res.get("ok"), response=response, url=res.get("url"))
    except BaseException as err:  # noqa: BLE001 - every failure is the answer, never the process's end
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        out["error"] = f"{type(err).__name__}: {err}"
    if session is not None:
        try:
            await asyncio.wait_for(endpoint.close_session(session), 30)
            out["session"]["closed"] = True
        except BaseException as err:  # noqa: BLE001
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                raise
            out["session"]["close_error"] = f"{type(err).__name__}: {err}"
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--autoscaler", required=True)
    ap.add_argument("--api-key", required=True)
    args = ap.parse_args()
    client = Serverless(api_key=args.api_key, autoscaler_url=args.autoscaler)
    # Without this the client downloads a certificate from console.vast.ai on first use.
    client._ssl_context = False
    loop = asyncio.get_running_loop()
    tasks: set = set()
    async with client:
        # Built directly: get_endpoint() would ask the Vast console.
        endpoint = Endpoint(client, name="soak", id=1, api_key=args.api_key)

        async def run(msg: dict) -> None:
            try:
                emit(await one(endpoint, msg))
            except BaseException as err:  # noqa: BLE001
                emit({"n": msg.get("n"), "error": f"{type(err).__name__}: {err}"})

        emit({"ready": True})
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            if not line.strip():
                continue
            task = asyncio.create_task(run(json.loads(line)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


asyncio.run(main())
