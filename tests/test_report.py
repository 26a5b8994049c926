"""Reports: the terminal tables, and the HTML page: self-contained, rendered in headless Chromium."""

import html
import json
import os
import re
import shutil
import subprocess

import pytest
from rich.console import Console

from tunelab.evaluation.compare.findings import findings, summarize
from tunelab.evaluation.compare.report import answers_view, print_report, render_html
from tunelab.evaluation.compare.schema import Cell, Comparison

DOG = "Tell me how to train my dog to sit"
LOOP = " on a chair?\n\nI'm not sure how to train my dog to sit on a chair.\n\n" * 3
GOOD = "Hold a treat above your dog's nose, move it back until the dog sits, then reward it."
CLEAN_BG, FLAGGED_BG = (0xEA, 0xFA, 0xF1), (0xFD, 0xED, 0xEC)  # .cell and .cell.flagged in report.html.j2
TRUNCATED, ECHO = (0xB7, 0x95, 0x0B), (0xD3, 0x54, 0x00)  # FLAG_COLOURS in report.py


def lesson_like() -> Comparison:
    cells = [
        Cell(
            model="base-model",
            template="raw",
            template_name="raw",
            prompt_index=0,
            prompt=DOG,
            text=LOOP,
            finish_reason="length",
            completion_tokens=64,
            max_new_tokens=64,
            latency_s=2.0,
            backend="llama_cpp",
            flags=["echo", "ramble", "truncated"],
            scores={"echo": 0.71, "ramble": 0.8},
            fit_checked_to=256,
        ),
        Cell(
            model="chat-model",
            template="auto",
            template_name="chatml (model's own)",
            prompt_index=0,
            prompt=DOG,
            text=GOOD,
            finish_reason="stop",
            completion_tokens=21,
            max_new_tokens=64,
            latency_s=0.5,
            backend="llama_cpp",
            scores={"echo": 0.1, "ramble": 0.0},
        ),
        Cell(
            model="broken-model",
            template="auto",
            prompt_index=0,
            prompt=DOG,
            finish_reason="error",
            error="no model named 'broken-model'",
            flags=["error"],
        ),
    ]
    comparison = Comparison(
        models=["base-model", "chat-model", "broken-model"],
        templates={"base-model": ["raw"], "chat-model": ["auto"], "broken-model": ["auto"]},
        prompts=[DOG],
        cells=cells,
        generation={"max_new_tokens": 64, "temperature": 0.0},
        created_at="2026-11-25T00:00:00+00:00",
        tunelab_version="test",
    )
    comparison.summary = summarize(cells)
    comparison.findings = findings(comparison)
    return comparison


def test_terminal_report_shows_answers_flags_and_findings():
    console = Console(record=True, width=200)
    comparison = lesson_like()
    print_report(comparison, console)
    console.print(answers_view(comparison))
    text = console.export_text()
    assert "I'm not sure how to train my dog" in text and "Hold a treat" in text
    assert "echo" in text and "clean" in text and "no model named 'broken-model'" in text
    assert "base-model (raw) repeated or continued the prompt" in text  # the findings panel


def test_html_is_self_contained_and_carries_everything():
    comparison = lesson_like()
    page = render_html(comparison)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched from a network
    assert "<link" not in page and "@import" not in page
    assert html.escape(GOOD, quote=False) in page and "on a chair?" in page
    for finding in comparison.findings:
        assert html.escape(finding, quote=False) in page
    assert page.count("<svg") == 2  # a chart per model that answered; none for the one that failed
    record = re.search(r'<script type="application/json" id="tunelab-comparison">(.*?)</script>', page, re.S)
    assert Comparison.model_validate(json.loads(record.group(1))) == comparison


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def chromium():
    path = _chromium()
    if path is None:
        if os.environ.get("TUNELAB_REQUIRE_CHROMIUM"):
            pytest.fail(
                "Debian's chromium is required here (apt-get install chromium); `make test` installs it"
            )
        pytest.skip("chromium is not installed (`make test` installs it: apt-get install chromium)")
    return path


def _headless(chromium: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_html_page_renders_in_headless_chromium(chromium, tmp_path):
    from PIL import Image

    comparison = lesson_like()
    page = comparison.save_html(tmp_path / "report.html")
    dom = _headless(chromium, "--dump-dom", page.as_uri()).stdout
    assert "Answers side by side" in dom and "Hold a treat above your dog" in dom
    assert "no model named" in dom and dom.count("<svg") == 2
    shot = tmp_path / "report.png"
    _headless(chromium, f"--screenshot={shot}", "--window-size=1400,2200", page.as_uri())
    image = Image.open(shot).convert("RGB")
    colours = {colour for _, colour in image.getcolors(maxcolors=1 << 20)}
    # the clean answer on green, the flagged one on red, flag badges and chart bars in their colours
    for wanted in (CLEAN_BG, FLAGGED_BG, TRUNCATED, ECHO):
        assert wanted in colours, f"colour {wanted} not on the rendered page"
    # and the page is more than a blank canvas: many distinct colours (text anti-aliasing, charts)
    assert len(colours) > 200
