"""API fuzzing (issue 19): schemathesis (its CLI, with tests/fuzz/checks.py as hooks) generates requests
from the server's own OpenAPI document for every route, in its coverage, fuzzing and stateful phases, and
sends them to a real `tunelab serve` (uvicorn on loopback, a tiny random-weight model on the
transformers backend) with a valid key, a revoked key, a made-up key and no key.

What must hold for every request: no answer >= 500; every 4xx in OpenAI's error body with a message;
without a valid key every route but the open ones a 401; the server still answering afterwards.
`TUNELAB_FUZZ_EXAMPLES` sets the examples per route (default 10: a bounded CI run)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.remote_server import RunningServer
from tunelab.config import Settings
from tunelab.server.service import Service
from tunelab.store.db import Store

EXAMPLES = os.environ.get("TUNELAB_FUZZ_EXAMPLES", "10")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fuzzed(tiny_chat_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz-home")  # its own: fuzzed uploads and jobs stay here
    settings = Settings(home=home)
    store = Store.open(settings, f"sqlite:///{home / 'tunelab.db'}")
    valid = store.create_key("fuzzer")[1]
    revoked_key, revoked = store.create_key("gone")
    store.revoke_key(revoked_key.id)
    # no job worker: a fuzzed fine-tuning job is stored and listed, not trained
    service = Service(
        settings, store, extra_models=[str(tiny_chat_dir)], backend="transformers", job_workers=0
    )
    with RunningServer(service) as running:
        yield {
            "url": running.url,
            "valid": valid,
            "revoked": revoked,
            "model": str(tiny_chat_dir),
            "home": str(home),
        }


KEYS = {"valid": None, "revoked": None, "unknown": "tl-not-a-key", "none": ""}


@pytest.mark.parametrize("key", list(KEYS))
def test_every_route_fuzzed_answers_no_5xx_and_openai_errors(fuzzed, key, tmp_path):
    secret = fuzzed.get(key) if KEYS[key] is None else KEYS[key]
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        fuzzed["url"] + "/openapi.json",
        "--checks",
        "not_a_server_error,openai_error_shape,refused_without_a_valid_key",
        "--max-examples",
        EXAMPLES,
        "--seed",
        "19",
        "--request-timeout",
        "120",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    if secret:
        command += ["-H", f"Authorization: Bearer {secret}"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz.checks", "TUNELAB_FUZZ_KEY": key}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    summary = run.stdout[-6000:].replace(secret, "[key]") if secret else run.stdout[-6000:]
    print(summary)
    assert run.returncode == 0, summary
    assert "API Operations" in run.stdout and "24/24" in run.stdout.replace(" ", ""), summary


def test_the_server_still_answers_after_the_fuzzing(fuzzed):
    # runs after the fuzzing (file order), on the same module-scoped server
    headers = {"Authorization": f"Bearer {fuzzed['valid']}"}
    body = {"model": fuzzed["model"], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    answer = httpx.post(fuzzed["url"] + "/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] is not None
    assert httpx.get(fuzzed["url"] + "/health").json()["status"] == "ok"


# -- by hand: what a generator rarely writes ----------------------------------------------------------


def post(fuzzed, route: str, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {fuzzed['valid']}", **kwargs.pop("headers", {})}
    return httpx.post(fuzzed["url"] + route, headers=headers, timeout=300, **kwargs)


def assert_refused(response: httpx.Response, status: int = 400, says: str = "") -> dict:
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert error["message"] and says in error["message"], error
    return error


def test_hostile_bodies_are_4xx_that_say_what_is_wrong(fuzzed):
    model, json_type = fuzzed["model"], {"content-type": "application/json"}
    hello = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    deep = json.dumps({"model": model})[:-1] + ', "messages": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert_refused(post(fuzzed, "/v1/chat/completions", content=deep, headers=json_type), says="nests")
    nul = {**hello, "messages": [{"role": "user", "content": "hi\x00there\x00"}]}
    assert post(fuzzed, "/v1/chat/completions", json=nul).status_code == 200
    assert post(fuzzed, "/v1/chat/completions", json={**hello, "frobnicate": [1]}).status_code == 200
    assert_refused(post(fuzzed, "/v1/chat/completions", content=b"\xc3\x28", headers=json_type), says="UTF-8")
    plain = post(fuzzed, "/v1/chat/completions", json=hello, headers={"content-type": "text/plain"})
    assert_refused(plain, says="application/json")
    # NaN and infinities (Python's json reads them), huge and negative numbers in every numeric field of
    # every route: each a 400 naming its field
    for route, body, field in numeric_fields(fuzzed):
        for value in ("NaN", "Infinity", "-Infinity", "1e400", "-99999999999999999999999999", "1e308"):
            text = json.dumps(set_field(body, field, "@VALUE@")).replace('"@VALUE@"', value)
            answer = post(fuzzed, route, content=text, headers=json_type)
            assert answer.status_code == 400, (route, field, value, answer.text[:300])
            error = assert_refused(answer)
            param = error["param"] or ""
            named = param.startswith(field) or param == field.split(".")[-1]
            # a job's hyperparameters are checked as a training config: the message names the setting
            named |= param == "hyperparameters" and error["message"].startswith("bad training settings: ")
            assert named, (route, field, value, error)
    # a model name is never a path the server opens: only served models answer
    for name in ("/etc/passwd", "../../../etc", str(Path(model).parent), "~/.ssh/id_rsa", "C:\\x", ""):
        named = post(fuzzed, "/v1/chat/completions", json={**hello, "model": name})
        assert named.status_code in (400, 404), (name, named.text)
        assert_refused(named, named.status_code)
    # a prompt of 10^6 tokens: refused before any model work, naming the context
    million = "a " * 1_000_000
    completions = {"model": model, "prompt": million, "max_tokens": 1}
    assert_refused(post(fuzzed, "/v1/completions", json=completions), says="maximum context length")
    ids = {"model": model, "prompt": [[5] * 1_000_000], "max_tokens": 1}
    assert_refused(post(fuzzed, "/v1/completions", json=ids), says="maximum context length")
    assert_refused(post(fuzzed, "/v1/embeddings", json={"model": model, "input": million}), says="at most")


def set_field(body: dict, path: str, value) -> dict:
    """`body` with the field at a dotted path set to `value` (a copy)."""
    body = json.loads(json.dumps(body))
    *parents, last = path.split(".")
    node = body
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return body


def numeric_fields(fuzzed) -> list[tuple[str, dict, str]]:
    model = fuzzed["model"]
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    completion = {"model": model, "prompt": "hi", "max_tokens": 2}
    line = json.dumps({"input": "q", "output": "a"}).encode() + b"\n"
    upload = post(fuzzed, "/v1/files", files={"file": ("n.jsonl", line)}, data={"purpose": "fine-tune"})
    job = {"model": model, "training_file": upload.json()["id"], "hyperparameters": {}}
    fields = [("/v1/chat/completions", chat, f) for f in ("temperature", "top_p", "presence_penalty")]
    fields += [("/v1/chat/completions", chat, f) for f in ("frequency_penalty", "max_tokens", "n", "seed")]
    fields += [("/v1/chat/completions", chat, f) for f in ("top_logprobs", "repetition_penalty")]
    fields += [("/v1/completions", completion, f) for f in ("max_tokens", "logprobs", "n", "temperature")]
    fields += [("/v1/embeddings", {"model": model, "input": "hi"}, "dimensions")]
    responses = {"model": model, "input": "hi", "max_output_tokens": 2}
    fields += [("/v1/responses", responses, f) for f in ("max_output_tokens", "temperature", "top_p")]
    hyper = (
        "hyperparameters.n_epochs",
        "hyperparameters.batch_size",
        "hyperparameters.learning_rate_multiplier",
    )
    fields += [("/v1/fine_tuning/jobs", job, f) for f in hyper]
    return fields


def test_hostile_uploads_never_choose_a_path_and_bad_files_are_named(fuzzed):
    line = json.dumps({"input": "q", "output": "a"}).encode() + b"\n"
    purpose = {"purpose": "fine-tune"}
    for name in ("../../escape.jsonl", "/etc/passwd", "..\\..\\win.jsonl", "a\x00b.jsonl"):
        stored = post(fuzzed, "/v1/files", files={"file": (name, line)}, data=purpose)
        assert stored.status_code == 200, stored.text
        assert "/" not in stored.json()["filename"] and "\x00" not in stored.json()["filename"]
    home = Path(fuzzed["home"])
    assert not (home.parent / "escape.jsonl").exists() and not (home.parent.parent / "escape.jsonl").exists()
    # stored under their ids, whatever the names: nothing named by the client is on disk
    assert all(re.fullmatch(r"file-[0-9a-f]+\.jsonl", p.name) for p in (home / "files").iterdir())
    assert_refused(post(fuzzed, "/v1/files", files={"file": ("", line)}, data=purpose))
    assert_refused(post(fuzzed, "/v1/files", files={"file": ("e.jsonl", b"")}, data=purpose), says="empty")
    latin1 = b'{"input": "caf\xe9", "output": "a"}\n'
    bad = post(fuzzed, "/v1/files", files={"file": ("l.jsonl", line + latin1)}, data=purpose)
    assert_refused(bad, says="l.jsonl:2: not UTF-8 text")
    assert_refused(post(fuzzed, "/v1/files", files={"file": ("p.jsonl", line)}), says="purpose")
    # a declared length of 1 GB is refused before the body is read
    host, port = fuzzed["url"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + fuzzed["valid"].encode()
            + b"\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
            + b"Content-Length: 1073741824\r\n\r\n--zz\r\n"
        )
        assert sock.recv(64).startswith(b"HTTP/1.1 413")
