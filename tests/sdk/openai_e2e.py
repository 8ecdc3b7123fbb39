#!/usr/bin/env python3
"""End-to-end check of a Livery gateway with the real `openai` Python SDK.

Usage: python openai_e2e.py BASE_URL API_KEY MODEL [EMBED_MODEL]

EMBED_MODEL `-` skips the embedding and Responses API checks (a model served by
an Anthropic route has neither). With LIVERY_SDK_FAULTS=1 (an upstream that obeys the mock's
fault directives in the body), it also checks that a provider's 400 raises
BadRequestError and that a stream broken off mid-way raises APIError in the SDK
instead of ending like a complete answer.

Prints one line per check and exits non-zero at the first failure. Run by
tests/sdk.rs (through tests/run.sh, which installs the SDK into .venv).
"""

import os
import sys
import traceback

import openai
from openai import OpenAI
from structured import Person

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hello to the SDK test."},
]


class CheckFailed(Exception):
    pass


def ensure(cond, what):
    if not cond:
        raise CheckFailed(what)


def check_chat(client, model):
    r = client.chat.completions.create(model=model, messages=MESSAGES)
    ensure(r.object == "chat.completion", f"object is {r.object!r}")
    ensure(r.model, "response has no model")
    ensure(len(r.choices) >= 1, "no choices")
    content = r.choices[0].message.content
    ensure(content, f"empty content: {r!r}")
    ensure(r.choices[0].finish_reason, "no finish_reason")
    ensure(r.usage is not None, "no usage")
    ensure(r.usage.prompt_tokens > 0, f"prompt_tokens = {r.usage.prompt_tokens}")
    ensure(
        r.usage.completion_tokens > 0,
        f"completion_tokens = {r.usage.completion_tokens}",
    )
    ensure(
        r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens,
        f"total_tokens {r.usage.total_tokens} != prompt + completion",
    )
    return f"{len(content)} chars, usage {r.usage.prompt_tokens}+{r.usage.completion_tokens}"


def collect_stream(stream):
    text = []
    finish = None
    usage_chunks = []
    chunks = 0
    for chunk in stream:
        chunks += 1
        ensure(chunk.object == "chat.completion.chunk", f"chunk object {chunk.object!r}")
        if chunk.usage is not None:
            usage_chunks.append(chunk)
        for choice in chunk.choices:
            if choice.delta is not None and choice.delta.content:
                text.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    return "".join(text), finish, usage_chunks, chunks


def check_stream(client, model):
    stream = client.chat.completions.create(model=model, messages=MESSAGES, stream=True)
    text, finish, usage_chunks, chunks = collect_stream(stream)
    ensure(text, "streamed text is empty")
    ensure(finish, "no finish_reason in the stream")
    # The gateway asks the upstream for usage but hides that chunk from a client
    # that did not ask for it.
    ensure(not usage_chunks, f"{len(usage_chunks)} usage chunk(s) without include_usage")
    return f"{chunks} chunks, {len(text)} chars, finish_reason={finish}"


def check_stream_usage(client, model):
    stream = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    last = None
    text = []
    finish = None
    usage_chunks = 0
    chunks = 0
    for chunk in stream:
        chunks += 1
        last = chunk
        if chunk.usage is not None:
            usage_chunks += 1
        for choice in chunk.choices:
            if choice.delta is not None and choice.delta.content:
                text.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    ensure(last is not None, "empty stream")
    ensure("".join(text), "streamed text is empty")
    ensure(finish, "no finish_reason in the stream")
    ensure(last.usage is not None, "the final chunk has no usage")
    ensure(usage_chunks == 1, f"{usage_chunks} usage chunks, wanted 1")
    ensure(last.usage.completion_tokens > 0, "usage.completion_tokens is 0")
    return f"{chunks} chunks, usage {last.usage.prompt_tokens}+{last.usage.completion_tokens}"


def check_embedding(client, model):
    # The SDK asks for base64 by default and decodes it.
    r = client.embeddings.create(model=model, input="hello")
    ensure(len(r.data) == 1, f"{len(r.data)} embeddings, wanted 1")
    emb = r.data[0].embedding
    ensure(len(emb) > 0, "empty embedding")
    ensure(all(isinstance(x, float) for x in emb), "embedding is not floats")
    ensure(r.usage is not None and r.usage.prompt_tokens > 0, "no embedding usage")
    # And the plain float encoding.
    r2 = client.embeddings.create(model=model, input=["hello", "world"], encoding_format="float")
    ensure(len(r2.data) == 2, f"{len(r2.data)} float embeddings, wanted 2")
    ensure(len(r2.data[0].embedding) == len(emb), "float and base64 dimensions differ")
    return f"{len(emb)} dimensions"


def check_models(client, model):
    ids = [m.id for m in client.models.list()]
    ensure(model in ids, f"{model!r} not in {ids}")
    one = client.models.retrieve(model)
    ensure(one.id == model and one.object == "model", f"models.retrieve: {one!r}")
    try:
        client.models.retrieve("no-such-model")
    except openai.NotFoundError as e:
        ensure(e.body.get("code") == "model_not_found", f"models.retrieve unknown: {e.body!r}")
    else:
        raise AssertionError("models.retrieve of an unknown model did not raise NotFoundError")
    return ", ".join(ids)


def check_completions(client, model):
    r = client.completions.create(model=model, prompt="Say hello", max_tokens=16)
    ensure(r.object == "text_completion", f"object is {r.object!r}")
    ensure(r.choices and r.choices[0].text, f"empty text: {r!r}")
    ensure(r.usage is not None and r.usage.total_tokens > 0, f"usage {r.usage!r}")
    parts = []
    for chunk in client.completions.create(
        model=model, prompt="Say hello", max_tokens=16, stream=True
    ):
        parts.extend(c.text for c in chunk.choices)
    ensure("".join(parts), "empty legacy stream")
    return f"{len(r.choices[0].text)} chars, streamed {len(''.join(parts))}"


def check_raw_response(client, model):
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    rid = raw.headers.get("x-request-id")
    ensure(rid, f"no x-request-id in {dict(raw.headers)}")
    r = raw.parse()
    ensure(r._request_id == rid, f"_request_id {r._request_id!r} != header {rid!r}")
    for leak in ("openai-organization", "openai-project", "cf-ray", "set-cookie"):
        ensure(leak not in raw.headers, f"provider header {leak} reached the client")
    return f"x-request-id {rid}"


def check_client_error(client, model):
    try:
        client.chat.completions.create(
            model=model, messages=MESSAGES, extra_body={"mock": {"status": 400}}
        )
    except openai.BadRequestError as e:
        ensure(e.status_code == 400, f"status {e.status_code}")
        ensure(isinstance(e.body, dict) and e.body.get("message"), f"body {e.body!r}")
        ensure(e.request_id, "no request id on the error")
        return f"BadRequestError ({e.status_code})"
    raise CheckFailed("a provider 400 did not raise BadRequestError")


def check_broken_stream(client, model):
    stream = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        stream=True,
        extra_body={"mock": {"drop_after": 3, "gap_ms": 20}},
    )
    chunks = 0
    try:
        for _ in stream:
            chunks += 1
    except openai.APIError as e:
        ensure(chunks > 0, "the error came before any chunk")
        return f"APIError after {chunks} chunks ({e.code or e.type})"
    raise CheckFailed(f"a stream broken after {chunks} chunks ended like a complete one")


def check_structured(client, model):
    """`parse()` with a pydantic model: the SDK sends its strict JSON schema
    and parses the answer's content back into the model, streamed and not."""
    r = client.chat.completions.parse(model=model, messages=MESSAGES, response_format=Person)
    parsed = r.choices[0].message.parsed
    ensure(isinstance(parsed, Person), f"parsed is {parsed!r}")
    with client.chat.completions.stream(
        model=model, messages=MESSAGES, response_format=Person
    ) as stream:
        final = stream.get_final_completion()
    streamed = final.choices[0].message.parsed
    ensure(streamed == parsed, f"streamed {streamed!r} != {parsed!r}")
    return f"parsed {parsed!r}"


def check_responses(client, model):
    """The Responses API: `responses.create`, the `responses.stream` helper
    (its final response and its text deltas agree) and `responses.parse`."""
    r = client.responses.create(model=model, instructions="Be brief.", input="Say hello.")
    ensure(r.object == "response", f"object is {r.object!r}")
    ensure(r.status == "completed", f"status {r.status!r}")
    ensure(r.output_text, f"no output_text: {r!r}")
    ensure(r.usage.input_tokens > 0 and r.usage.output_tokens > 0, f"usage {r.usage!r}")
    deltas = []
    with client.responses.stream(model=model, input="Say hello.") as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    ensure("".join(deltas) == final.output_text, "streamed deltas differ from the final text")
    ensure(final.usage.output_tokens > 0, f"streamed usage {final.usage!r}")
    parsed = client.responses.parse(model=model, input="Who?", text_format=Person).output_parsed
    ensure(isinstance(parsed, Person), f"output_parsed is {parsed!r}")
    return f"{len(r.output_text)} chars, streamed {len(deltas)} deltas, parsed {parsed!r}"


def check_wrong_key(base_url, model):
    bad = OpenAI(base_url=base_url, api_key="sk-livery-wrong-key", max_retries=0, timeout=30)
    try:
        bad.chat.completions.create(model=model, messages=MESSAGES)
    except openai.AuthenticationError as e:
        ensure(e.status_code == 401, f"status {e.status_code}")
        return f"AuthenticationError ({e.status_code})"
    raise CheckFailed("a wrong key did not raise AuthenticationError")


def main(argv):
    if len(argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    base_url, api_key, model = argv[1], argv[2], argv[3]
    embed_model = argv[4] if len(argv) == 5 else model
    print(f"openai {openai.__version__} against {base_url} (model {model}, embeddings {embed_model})")
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)
    checks = [
        ("chat completion", lambda: check_chat(client, model)),
        ("streamed chat completion", lambda: check_stream(client, model)),
        ("streamed chat completion with usage", lambda: check_stream_usage(client, model)),
        ("embedding", lambda: check_embedding(client, embed_model)),
        ("models.list", lambda: check_models(client, model)),
        ("wrong key", lambda: check_wrong_key(base_url, model)),
        ("raw response headers", lambda: check_raw_response(client, model)),
        ("structured output", lambda: check_structured(client, model)),
    ]
    if os.environ.get("LIVERY_SDK_FAULTS") == "1":
        checks += [
            ("legacy completions", lambda: check_completions(client, model)),
            ("provider 400", lambda: check_client_error(client, model)),
            ("stream broken mid-way", lambda: check_broken_stream(client, model)),
        ]
    if embed_model == "-":
        # An Anthropic route: no embeddings (its Responses API is translated).
        checks = [c for c in checks if c[0] != "embedding"]
    checks.append(("responses", lambda: check_responses(client, model)))
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
