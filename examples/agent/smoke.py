#!/usr/bin/env python3
"""The example agent's smoke test, run in the bottle.

A real client library nobody here wrote (Anthropic's Python SDK) calls the API through the
bottle's gateway, like an agent would. The key the SDK holds is a placeholder: the gateway drops
it and injects the real one, which never enters the VM. A host the bottle does not allow is
refused before any connection leaves the bundle.
"""
import os
import sys
import urllib.error
import urllib.request

import anthropic

base_url = os.environ.get("KRBOTTLE_SMOKE_BASE_URL", "https://api.anthropic.com")
model = os.environ.get("KRBOTTLE_SMOKE_MODEL", "claude-sonnet-4-5")
print(f"smoke: asking {base_url} through the gateway at {os.environ.get('HTTPS_PROXY')}")
print(f"smoke: the key in this VM is {os.environ.get('ANTHROPIC_API_KEY', '')[:24]}… (a placeholder)")
client = anthropic.Anthropic(base_url=base_url, max_retries=0, timeout=60)
try:
    message = client.messages.create(
        model=model,
        max_tokens=64,
        messages=[{"role": "user", "content": "Say hello from inside a krbottle bottle."}],
    )
except anthropic.APIStatusError as e:
    print(f"smoke: the API answered {e.status_code}: {e.message}")
    sys.exit(2)
print("smoke: the API answered:", message.content[0].text)

try:
    urllib.request.urlopen("https://example.org/", timeout=30)
    print("smoke: FAIL: example.org was reachable, the bottle allows only its allowlist")
    sys.exit(3)
except (urllib.error.URLError, OSError) as e:
    print(f"smoke: example.org is refused, as the manifest says ({e})")
print("smoke: ok")
