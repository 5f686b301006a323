"""A driver for the official MCP Python SDK (the `mcp` package from PyPI), used by the supervise
tests as a client that nobody in this project wrote.

usage:
  mcp_client.py list URL [--mode legacy|auto]
  mcp_client.py call URL TOOL ARGS_JSON [--mode legacy|auto]

Prints one JSON object on stdout:
  list: {"tools": {name: input_schema}}
  call: {"is_error": bool, "text": str, "progress": [{"progress", "total", "message"}]}
  either, when the SDK raised: {"exception": str}
"""

import argparse
import asyncio
import json
import sys

from mcp import Client


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["list", "call"])
    p.add_argument("url")
    p.add_argument("tool", nargs="?")
    p.add_argument("args", nargs="?", default="{}")
    p.add_argument("--mode", default="legacy")
    a = p.parse_args()
    progress = []

    async def on_progress(value, total, message):
        progress.append({"progress": value, "total": total, "message": message})

    try:
        async with Client(a.url, mode=a.mode) as client:
            if a.what == "list":
                tools = await client.list_tools()
                out = {"tools": {t.name: t.input_schema for t in tools.tools}}
            else:
                result = await client.call_tool(
                    a.tool, json.loads(a.args), progress_callback=on_progress
                )
                text = "\n".join(c.text for c in result.content if c.type == "text")
                out = {"is_error": bool(result.is_error), "text": text, "progress": progress}
    except BaseException as e:  # the SDK raises exception groups from its task groups
        out = {"exception": describe(e), "progress": progress}
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


def describe(e: BaseException) -> str:
    subs = getattr(e, "exceptions", None)
    if subs:
        return "; ".join(describe(s) for s in subs)
    return f"{type(e).__name__}: {e}"


asyncio.run(main())
