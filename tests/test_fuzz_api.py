"""API fuzzing (issue 19): schemathesis (its CLI, with tests/fuzz/checks.py as hooks) generates requests
from the server's own OpenAPI document for every route, in its coverage, fuzzing and stateful phases, and
sends them to a real `tunelab serve` (uvicorn on loopback, a tiny random-weight model on the
transformers backend) with a valid key, a revoked key, a made-up key and no key.

What must hold for every request: no answer >= 500; every 4xx in OpenAI's error body with a message;
without a valid key every route but the open ones a 401; the server still answering afterwards.
`TUNELAB_FUZZ_EXAMPLES` sets the examples per route (default 10: a bounded CI run)."""

from __future__ import annotations

import os
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
        yield {"url": running.url, "valid": valid, "revoked": revoked, "model": str(tiny_chat_dir)}


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
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
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
