"""The HTML viewer in a real headless Chromium (Debian's /usr/bin/chromium, driven by playwright).

What is checked against Python's own numbers: the lines drawn per head, the lines highlighted
when a token is hovered (the nonzero weights of its row), the weights written beside the other
column's tokens, and that another head / kind redraws different pixels. Screenshots go to
test-artifacts/ (gitignored). Skips with a reason when Chromium or playwright is missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from selfattn.inspect.html import collect_maps, write_viewer
from selfattn.inspect.source import RandomModelSpec, random_model

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
NONZERO = (0.5 / 255) ** 2  # weights the page encodes as code 0 (sqrt · 255 rounds to 0): not drawn

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                              args=ARGS)
        yield b
        b.close()


def _open(browser, path: Path):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(15000)
    page.goto(path.as_uri())
    page.wait_for_function("window.selfattnViewer && window.selfattnViewer.stats.draws > 0")
    return page, errors


def _stats(page) -> dict:
    return page.evaluate("({...window.selfattnViewer.stats})")


def _pixels(page) -> str:
    return page.evaluate("document.getElementById('lines').toDataURL()")


@pytest.fixture(scope="module")
def short_page(tmp_path_factory):
    ins = random_model("the cat sat on the mat .", RandomModelSpec(kind="encoder-decoder", d_model=16, num_heads=4),
                       target="le chat est assis")
    maps = collect_maps(ins.model, ins.ids, ins.labels, ins.tgt_ids, ins.tgt_labels)
    return write_viewer(tmp_path_factory.mktemp("viewer") / "short.html", maps, "short"), maps


def test_loads_without_errors_and_draws_every_line(browser, short_page):
    path, maps = short_page
    page, errors = _open(browser, path)
    enc = maps["encoder"].weights
    assert errors == []
    assert _stats(page)["lines"] == int((enc[0, 0] >= NONZERO).sum())  # 7 x 7 = 49 <= line budget
    assert page.locator("#left .tok").count() == 7 and page.locator("#right .tok").count() == 7
    page.close()


def test_another_head_and_kind_redraw(browser, short_page):
    path, maps = short_page
    page, errors = _open(browser, path)
    before = _pixels(page)
    page.select_option("#head", "2")
    assert page.evaluate("window.selfattnViewer.state.head") == 2
    assert _pixels(page) != before
    page.select_option("#kind", "cross")  # queries: the 4 target tokens, keys: the 7 source tokens
    assert page.locator("#left .tok").count() == 4 and page.locator("#right .tok").count() == 7
    assert _stats(page)["lines"] == int((maps["cross"].weights[0, 2] >= NONZERO).sum())
    assert errors == []
    page.close()


def test_hover_highlights_the_tokens_lines(browser, short_page):
    path, maps = short_page
    page, errors = _open(browser, path)
    page.select_option("#layer", "1")
    page.select_option("#head", "3")
    before = _pixels(page)
    page.hover("#left .tok[data-i='4']")
    row = maps["encoder"].weights[1, 3, 4]  # query 4's weights over the 7 keys
    stats = _stats(page)
    assert stats["focus"] == "q4" and stats["highlighted"] == int((row >= NONZERO).sum())
    assert _pixels(page) != before
    shown = page.eval_on_selector_all("#right .tok", "els => els.map(e => parseFloat(e.dataset.w || 'NaN'))")
    # The page shows (code/255)^2 with 3 decimals: error <= sqrt-quantisation (w·2/255 + 1/255²) + 5e-4.
    np.testing.assert_allclose(shown, row, atol=float(2 * row.max() / 255 + 1 / 255**2 + 5e-4))
    orange = page.evaluate("""(() => { const c = document.getElementById('lines');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] > 180 && d[i+1] > 60 && d[i+1] < 140 && d[i+2] < 90 && d[i+3] > 100) n++;
        return n; })()""")
    assert orange > 100  # the focus colour #e8590c is on the canvas
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer_short_hover.png"))
    page.mouse.move(1050, 20)  # leave the columns: focus off, weights cleared
    assert _stats(page)["focus"] is None
    assert page.locator(".tok[data-w]").count() == 0
    assert errors == []
    page.close()


def test_500_tokens_readable_and_responsive(browser, tmp_path):
    words = [f"w{i % 97}" for i in range(500)]  # the same input on every machine
    ins = random_model(" ".join(words), RandomModelSpec(kind="encoder-decoder", d_model=16, num_heads=2,
                                                        num_layers=1, positional="alibi"),
                       target=" ".join(words[:450]))
    maps = collect_maps(ins.model, ins.ids, ins.labels, ins.tgt_ids, ins.tgt_labels)
    page, errors = _open(browser, write_viewer(tmp_path / "long.html", maps, "500 tokens"))
    stats = _stats(page)
    # responsiveness is bounded by the line budget (a count, the same on every machine) — not by wall-clock
    assert page.locator("#left .tok").count() == 500 and 0 < stats["lines"] <= 6000
    font = page.eval_on_selector("#left .tok[data-i='0']", "e => parseFloat(getComputedStyle(e).fontSize)")
    assert font >= 11  # tokens stay readable at 500
    page.locator("#scroller").evaluate("e => e.scrollTop = 4000")
    tok = page.locator("#left .tok[data-i='260']")
    tok.hover()
    row = maps["encoder"].weights[0, 0, 260]
    assert _stats(page)["highlighted"] == int((row >= NONZERO).sum())
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer_500_hover.png"))
    page.select_option("#kind", "cross")
    assert page.locator("#left .tok").count() == 450
    assert errors == []
    page.close()
