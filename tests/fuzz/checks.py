"""schemathesis checks for tests/test_fuzz_api.py, loaded by the CLI as its hooks module
(`SCHEMATHESIS_HOOKS=tests.fuzz.checks`). `TUNELAB_FUZZ_KEY` says which key the run sends: `valid`, or
`revoked` / `unknown` / `none` (then every route but the open ones must be a 401)."""

from __future__ import annotations

import os

import schemathesis

OPEN_ROUTES = {"/health", "/", "/openapi.json"}  # answered without a key


@schemathesis.check
def openai_error_shape(ctx, response, case):
    """A 4xx says what is wrong in OpenAI's body shape (the openai SDK reads `error.message`)."""
    if not 400 <= response.status_code < 500:
        return None
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        shape = f"a {response.status_code} that is not OpenAI's error shape: {response.text[:300]}"
        raise AssertionError(shape) from None
    assert isinstance(error, dict), f"error is not an object: {error!r}"
    assert isinstance(error.get("message"), str) and error["message"].strip(), f"no message: {error!r}"
    assert isinstance(error.get("type"), str) and error["type"], f"no type: {error!r}"
    assert {"param", "code"} <= set(error), f"param or code missing: {error!r}"
    return None


@schemathesis.check
def refused_without_a_valid_key(ctx, response, case):
    """With a revoked, unknown or missing key every route but the open ones answers 401 to its methods."""
    if os.environ.get("TUNELAB_FUZZ_KEY", "valid") == "valid" or case.path in OPEN_ROUTES:
        return None
    if case.method.upper() != case.operation.method.upper():
        return None  # a method the route does not have (the coverage phase's TRACE): a 405 either way
    asked = f"{case.method} {case.path}"
    assert response.status_code == 401, f"{asked} answered {response.status_code} without a valid key"
    return None
