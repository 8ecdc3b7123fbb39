#!/usr/bin/env python3
"""End-to-end check of a Livery gateway's `/v1/messages` with the real
`anthropic` Python SDK.

Usage: python anthropic_e2e.py BASE_URL API_KEY MODEL

BASE_URL is the gateway's root (the SDK appends `/v1/messages`). Prints one line
per check and exits non-zero at the first failure. Run by tests/sdk.rs (through
tests/run.sh, which installs the SDK into .venv).
"""

import sys
import traceback

import anthropic
from anthropic import Anthropic
from structured import Person

SYSTEM = "Be brief."
MESSAGES = [{"role": "user", "content": "Say hello to the SDK test."}]


class CheckFailed(Exception):
    pass


def ensure(cond, what):
    if not cond:
        raise CheckFailed(what)


def check_create(client, model):
    r = client.messages.create(model=model, max_tokens=200, system=SYSTEM, messages=MESSAGES)
    ensure(r.type == "message", f"type is {r.type!r}")
    ensure(r.role == "assistant", f"role is {r.role!r}")
    ensure(r.id.startswith("msg_"), f"id {r.id!r}")
    ensure(r.content and r.content[0].type == "text", f"content {r.content!r}")
    ensure(r.content[0].text, "empty text")
    ensure(r.stop_reason == "end_turn", f"stop_reason {r.stop_reason!r}")
    ensure(r.usage.input_tokens > 0, f"input_tokens = {r.usage.input_tokens}")
    ensure(r.usage.output_tokens > 0, f"output_tokens = {r.usage.output_tokens}")
    return f"{len(r.content[0].text)} chars, usage {r.usage.input_tokens}+{r.usage.output_tokens}"


def check_stream_helper(client, model):
    with client.messages.stream(
        model=model, max_tokens=200, system=SYSTEM, messages=MESSAGES
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    ensure(text, "streamed text is empty")
    ensure(final.content[0].text == text, "final message differs from the streamed text")
    ensure(final.stop_reason == "end_turn", f"stop_reason {final.stop_reason!r}")
    ensure(final.usage.output_tokens > 0, "usage.output_tokens is 0")
    return f"{len(text)} chars, usage {final.usage.input_tokens}+{final.usage.output_tokens}"


def check_stream_events(client, model):
    events = list(
        client.messages.create(model=model, max_tokens=200, messages=MESSAGES, stream=True)
    )
    kinds = [e.type for e in events]
    ensure(kinds[0] == "message_start", f"first event {kinds[0]!r}")
    ensure(kinds[-1] == "message_stop", f"last event {kinds[-1]!r}")
    ensure("content_block_delta" in kinds, f"no delta in {kinds}")
    ensure("message_delta" in kinds, f"no message_delta in {kinds}")
    return f"{len(events)} events"


def check_count_tokens(client, model):
    raw = client.messages.with_raw_response.count_tokens(
        model=model, system=SYSTEM, messages=MESSAGES
    )
    r = raw.parse()
    ensure(r.input_tokens > 0, f"input_tokens = {r.input_tokens}")
    # This script runs through an OpenAI route (tests/sdk.rs), which has no
    # count of its own: the gateway's is marked.
    estimated = raw.headers.get("x-livery-estimated")
    ensure(estimated == "true", f"x-livery-estimated = {estimated!r}")
    return f"{r.input_tokens} input tokens (the gateway's estimate)"


def check_parse(client, model):
    """`messages.parse()` with a pydantic model: the SDK sends a structured
    output format and parses the answer's text back into the model."""
    r = client.messages.parse(
        model=model, max_tokens=200, messages=MESSAGES, output_format=Person
    )
    parsed = r.parsed_output
    ensure(isinstance(parsed, Person), f"parsed_output is {parsed!r}")
    return f"parsed {parsed!r}"


def check_wrong_key(base_url, model):
    bad = Anthropic(base_url=base_url, api_key="sk-livery-wrong-key", max_retries=0, timeout=30)
    try:
        bad.messages.create(model=model, max_tokens=10, messages=MESSAGES)
    except anthropic.AuthenticationError as e:
        ensure(e.status_code == 401, f"status {e.status_code}")
        return f"AuthenticationError ({e.status_code})"
    raise CheckFailed("a wrong key did not raise AuthenticationError")


def check_unknown_model(client):
    try:
        client.messages.create(model="no-such-model", max_tokens=10, messages=MESSAGES)
    except anthropic.NotFoundError as e:
        ensure(e.status_code == 404, f"status {e.status_code}")
        ensure(e.body["type"] == "error", f"body {e.body!r}")
        return f"NotFoundError ({e.body['error']['type']})"
    raise CheckFailed("an unknown model did not raise NotFoundError")


def main(argv):
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    base_url, api_key, model = argv[1], argv[2], argv[3]
    print(f"anthropic {anthropic.__version__} against {base_url} (model {model})")
    client = Anthropic(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)
    checks = [
        ("messages.create", lambda: check_create(client, model)),
        ("messages.stream", lambda: check_stream_helper(client, model)),
        ("streamed events", lambda: check_stream_events(client, model)),
        ("messages.count_tokens", lambda: check_count_tokens(client, model)),
        ("messages.parse", lambda: check_parse(client, model)),
        ("wrong key", lambda: check_wrong_key(base_url, model)),
        ("unknown model", lambda: check_unknown_model(client)),
    ]
    for name, check in checks:
        try:
            detail = check()
        except CheckFailed as e:
            print(f"FAIL {name}: {e}")
            return 1
        except Exception:  # noqa: BLE001 - report anything the SDK raised
            print(f"FAIL {name}: unexpected exception")
            traceback.print_exc(file=sys.stdout)
            return 1
        print(f"ok   {name}: {detail}")
    print(f"all {len(checks)} SDK checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
