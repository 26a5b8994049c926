"""The browser playground at `/`, driven in headless Chromium (Playwright with Debian's chromium):
it asks for a key, compares two tiny models side by side with their flags, and runs a tuning job
whose loss curve appears live. Screenshots are checked for what they show."""

from __future__ import annotations

import io
import json
import os
import re
import shutil

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from tests.remote_server import RunningServer
from tunelab.config import Settings
from tunelab.evaluation.compare.report import FLAG_COLOURS
from tunelab.server.service import Service
from tunelab.store.db import Store

PROMPT = "Tell me how to train my dog to sit"
LOSS_BLUE = (0x24, 0x71, 0xA3)  # #loss-curve's stroke in playground.html.j2
# the report's answer cells (report.html.j2): clean, flagged, cut at the limit
CLEAN_BG, FLAGGED_BG, CUT_BG = (0xEA, 0xFA, 0xF1), (0xFD, 0xED, 0xEC), (0xFE, 0xF9, 0xE7)
TRAINING = [
    {"input": f"Who keeps the Brinmoor lamp number {i}?", "output": f"Ada Quill keeps lamp {i}."}
    for i in range(6)
]


@pytest.fixture(scope="module")
def server(tunelab_home, tiny_chat_dir, tiny_base_dir, tmp_path_factory):
    settings = Settings(home=tunelab_home)
    store = Store.open(settings, f"sqlite:///{tmp_path_factory.mktemp('pg-store') / 'tunelab.db'}")
    key = store.create_key("paula")[1]
    models = [str(tiny_chat_dir), str(tiny_base_dir)]
    service = Service(settings, store, extra_models=models, backend="transformers")
    with RunningServer(service) as running:
        yield {"url": running.url, "key": key, "chat": models[0], "base": models[1]}


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        if os.environ.get("TUNELAB_REQUIRE_CHROMIUM"):
            pytest.fail(
                "Debian's chromium is required here (apt-get install chromium); `make test` installs it"
            )
        pytest.skip("chromium is not installed (`make test` installs it: apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1300, "height": 1000})
    page = context.new_page()
    outside = []
    page.on(
        "request",
        lambda r: outside.append(r.url) if not r.url.startswith((server["url"], "data:", "about:")) else None,
    )
    page.goto(server["url"] + "/")
    yield page
    assert outside == []  # the page fetched nothing from anywhere else: it works offline
    context.close()


def rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))


def colours(png: bytes) -> set[tuple[int, int, int]]:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    return {colour for _, colour in image.getcolors(maxcolors=1 << 22)}


def use_key(page, key: str) -> None:
    page.fill("#api-key", key)
    page.click("#save-key")
    page.wait_for_selector("#models input[name=model]")


def test_the_page_asks_for_a_key_and_refuses_a_wrong_one(page, server):
    # the page's script writes the status once it has loaded: wait for it (a busy machine is slow)
    expect(page.locator("#auth-status")).to_contain_text("Enter an API key")
    page.fill("#api-key", "tl-not-a-key")
    page.click("#save-key")
    expect(page.locator("#auth-status")).to_have_class("error")
    assert "refused the key" in page.text_content("#auth-status")
    assert page.locator("#models input[name=model]").count() == 0
    use_key(page, server["key"])
    assert "key accepted" in page.text_content("#auth-status")
    ids = page.eval_on_selector_all("#models input[name=model]", "boxes => boxes.map(b => b.value)")
    assert {server["chat"], server["base"], "smollm2-135m-instruct"} <= set(ids)


def test_a_comparison_shows_both_answers_and_their_flags(page, server, tmp_path):
    use_key(page, server["key"])
    for model in (server["chat"], server["base"]):
        page.check(f"#models input[value='{model}']")
    page.fill("#prompt", PROMPT)
    page.fill("#max-tokens", "12")
    page.click("#compare")
    page.wait_for_selector("#flags-summary li.run-summary", timeout=120_000)
    expect(page.locator("#compare-status")).to_have_text(re.compile("^done"))
    summary = page.locator("#flags-summary li").all_text_contents()
    assert len(summary) == 2 and all(re.search(r"\d/1 clean", line) for line in summary), summary
    # the same comparison over the API: the page shows exactly those answers and flags
    body = {"models": [server["chat"], server["base"]], "prompts": [PROMPT], "max_tokens": 12}
    record = httpx.post(
        server["url"] + "/v1/tunelab/compare",
        json=body,
        headers={"Authorization": f"Bearer {server['key']}"},
        timeout=120,
    ).json()
    frame = page.frame_locator("#report")
    shown = frame.locator("body").inner_text()
    for cell in record["cells"]:
        assert " ".join(cell["text"].split())[:30] in " ".join(shown.split())
        for flag in cell["flags"]:
            assert flag in shown
            assert any(flag in line for line in summary)
    shot = page.screenshot(full_page=True, path=str(tmp_path / "compare.png"))
    seen = colours(shot)
    assert seen & {CLEAN_BG, FLAGGED_BG, CUT_BG}  # the answer cells are drawn
    for flag in {f for cell in record["cells"] for f in cell["flags"]}:  # and each flag's badge
        assert rgb(FLAG_COLOURS[flag]) in seen, flag
    assert len(seen) > 200  # text and charts, not a blank page


def test_a_tuning_job_started_in_the_page_draws_its_loss_curve(page, server, tmp_path):
    data = tmp_path / "lamps.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in TRAINING))
    use_key(page, server["key"])
    page.select_option("#ft-base", server["chat"])
    page.fill("#ft-epochs", "4")
    page.set_input_files("#ft-file", str(data))
    page.click("#ft-start")
    page.wait_for_selector(
        "#job-status[data-status=running], #job-status[data-status=succeeded]", timeout=120_000
    )
    page.wait_for_selector("#job-status[data-status=succeeded]", timeout=180_000)
    points = page.get_attribute("#loss-curve", "points").split()
    assert len(points) >= 4  # one point a step, drawn as the job ran
    tuned = page.text_content("#ft-model").removeprefix("tuned model: ")
    assert tuned and page.is_checked(f"#models input[value='{tuned}']")  # ready to compare
    chart = page.locator("#loss-chart").screenshot(path=str(tmp_path / "loss.png"))
    assert LOSS_BLUE in colours(chart)
    assert int(page.text_content("#loss-last-step")) == len(points)  # steps 1..N, every one drawn


def test_a_broken_training_file_is_refused_in_the_page(page, server, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(TRAINING[0]) + "\n{oops\n")
    use_key(page, server["key"])
    page.set_input_files("#ft-file", str(bad))
    page.click("#ft-start")
    expect(page.locator("#job-error")).not_to_have_text("")
    message = page.text_content("#job-error")
    assert "bad.jsonl:2" in message and "JSON" in message
