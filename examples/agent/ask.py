#!/usr/bin/env python3
"""Asks the human on the host for an approval, as an agent would, and prints the answer.

usage (in a bottle whose manifest says `supervise = true`):
  python3 /opt/example/ask.py TITLE [DETAILS]

The MCP server is found where Claude Code finds it: `mcpServers.supervise` in `~/.claude.json`,
which `krbottle start` provisioned. The client is the official MCP Python SDK (`mcp` from PyPI).
The call returns `pending` after the server's bounded wait (Claude Code's tool calls die after
about five minutes); this script then keeps asking with `await_decision`, as an agent should.
Exit status: 0 approved, 1 denied or expired, 2 no supervise server or a failed call.
"""
import asyncio
import json
import os
import re
import sys

from mcp import Client


def server_url() -> str:
    path = os.path.expanduser("~/.claude.json")
    try:
        with open(path) as f:
            servers = json.load(f).get("mcpServers", {})
    except (OSError, ValueError) as e:
        sys.exit(f"ask: cannot read {path}: {e}")
    if "supervise" not in servers:
        print("ask: this bottle has no supervise server (set `supervise = true` in its manifest)")
        sys.exit(2)
    return servers["supervise"]["url"]


def text_of(result) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


async def ask(title: str, details: str) -> int:
    url = server_url()
    print(f"ask: asking the human through {url}", flush=True)
    async with Client(url) as client:
        result = await client.call_tool(
            "request_approval", {"title": title, "details": details, "kind": "example"}
        )
        while True:
            text = text_of(result)
            if result.is_error:
                print(f"ask: the call failed: {text}")
                return 2
            print(f"ask: {text}", flush=True)
            first = text.split(maxsplit=1)[0].lower() if text else ""
            if first.startswith("approved"):
                return 0
            if not first.startswith("pending"):
                return 1
            found = re.search(r'request (\S+) "', text)
            if not found:
                print("ask: pending without a request id")
                return 2
            result = await client.call_tool("await_decision", {"id": found.group(1)})


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: ask.py TITLE [DETAILS]")
    sys.exit(asyncio.run(ask(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")))
