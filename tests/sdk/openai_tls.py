#!/usr/bin/env python3
"""The `openai` SDK against a Livery gateway over HTTPS (tests/tls.rs).

Usage: python openai_tls.py BASE_URL API_KEY MODEL CA_FILE HOST

HOST (the name in BASE_URL) is resolved to 127.0.0.1 here, and only the test
CA in CA_FILE is trusted. Prints one line per check; exits non-zero on failure.
"""

import socket
import ssl
import sys

import httpx
from openai import OpenAI

base_url, key, model, cafile, host = sys.argv[1:6]

_getaddrinfo = socket.getaddrinfo


def _loopback(name, *args, **kwargs):
    if name == host:
        name = "127.0.0.1"
    return _getaddrinfo(name, *args, **kwargs)


socket.getaddrinfo = _loopback

ctx = ssl.create_default_context(cafile=cafile)
client = OpenAI(
    base_url=base_url,
    api_key=key,
    http_client=httpx.Client(verify=ctx),
    max_retries=2,
)
messages = [{"role": "user", "content": "Say hello over HTTPS."}]

r = client.chat.completions.create(model=model, messages=messages)
assert r.object == "chat.completion", r
assert r.choices[0].message.content, r
print(f"ok   chat over https: {len(r.choices[0].message.content)} chars")

text = []
for chunk in client.chat.completions.create(model=model, messages=messages, stream=True):
    if chunk.choices:
        text.append(chunk.choices[0].delta.content or "")
assert "".join(text), "empty stream"
print("ok   streamed chat over https")
print("SDK over HTTPS passed")
