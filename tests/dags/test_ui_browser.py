"""The UI as a person uses it: Chromium (Playwright) against a real `airflow standalone`.

Log in, trigger optimize_model from its form (a pasted -1 is refused, then a good value goes
through), watch the run succeed, open the Optimise page and the run's page with its table and
plots, follow the MLflow model-version link. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.dags, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path(os.environ.get("TFOPT_CHROMIUM", "/usr/bin/chromium"))
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
STEP_TIMEOUT_MS = 120_000
RUN_TIMEOUT_S = 1800  # a 2-core machine shared with other test suites can be this slow


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Headless Chromium; missing is a skip on a laptop and a failure in CI (CI=true)."""
    if CHROMIUM.exists():
        return CHROMIUM
    message = f"{CHROMIUM} is missing: run infra/local/install-browser.sh"
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def page(chromium: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=LAUNCH_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(STEP_TIMEOUT_MS)
        try:
            yield context.new_page()
        finally:
            browser.close()


def shot(page: Any, name: str) -> Path:
    """A full-page screenshot into test-artifacts/, checked to be more than a blank page."""
    path = ARTIFACTS / name
    page.screenshot(path=path, full_page=True)
    assert path.stat().st_size > 20_000, f"{path} looks blank"
    return path


def log_in(page: Any, server: Any) -> None:
    page.goto(f"{server.url}/")
    page.locator("input[name=username]").fill(server.user)
    page.locator("input[name=password]").fill(server.password)
    shot(page, "ui-01-login.png")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"^(?!.*/auth/login).*$"))


def trigger_from_the_form(page: Any, server: Any, dag_id: str) -> None:
    """Open the trigger form, paste -1 (refused by the API's schema check), then 0.05."""
    page.goto(f"{server.url}/dags/{dag_id}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    tolerance = dialog.locator("input[name=element_accuracy_tolerance]")
    tolerance.fill("-1")
    tolerance.blur()
    assert tolerance.input_value() == "-1", "the form must not clamp a value it will refuse"
    dialog.get_by_test_id("trigger-dag-submit").click()
    refused = page.get_by_text("Failed to Trigger Dag")
    refused.wait_for()
    shot(page, "ui-02-form-refuses-minus-one.png")
    page.mouse.move(0, 0)  # a hovered toast stays open, over the Trigger button
    refused.wait_for(state="hidden")
    manual = [run for run in server.runs(dag_id) if run["run_type"] == "manual"]
    assert manual == [], "a refused value must not start a run"
    tolerance.fill("0.05")
    tolerance.blur()
    shot(page, "ui-03-form-filled.png")
    dialog.get_by_test_id("trigger-dag-submit").click()
    dialog.wait_for(state="hidden")


def wait_for_manual_run(server: Any, dag_id: str) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        runs = [r for r in server.runs(dag_id) if r["run_type"] == "manual"]
        if runs and runs[0]["state"] in ("success", "failed"):
            return runs[0]
        assert time.monotonic() < deadline, f"{dag_id}: {runs} not finished in {RUN_TIMEOUT_S} s"
        time.sleep(5)


def test_a_person_triggers_a_run_and_reads_its_report(test_airflow, page) -> None:
    server, model = test_airflow.server, test_airflow.demo

    log_in(page, server)
    trigger_from_the_form(page, server, model.dag_id)
    run = wait_for_manual_run(server, model.dag_id)
    assert run["conf"]["accuracy_tolerance"] == 0.05
    page.goto(f"{server.url}/dags/{model.dag_id}/runs/{run['dag_run_id']}")
    page.get_by_text("report").first.wait_for()
    shot(page, "ui-04-run-grid.png")
    assert run["state"] == "success", server.task_states(model.dag_id, run["dag_run_id"])

    page.get_by_role("link", name="Optimise").click()
    frame = page.frame_locator("iframe").first
    frame.get_by_role("heading", name="Model optimisation runs").wait_for()
    frame.get_by_role("link", name=model.name).first.click()
    # The list of all models links the run too: click it only once the model's own page is in,
    # or the click lands on the page being replaced and is lost.
    frame.get_by_role("link", name="all models").wait_for()
    frame.get_by_role("link", name=re.compile(r"^manual__")).first.click()
    table = frame.locator("table#variants")
    table.wait_for()
    rows = table.locator("tbody tr")
    assert rows.count() == 2
    verdicts = {
        row.get_attribute("data-variant"): row.get_attribute("data-verdict") for row in rows.all()
    }
    assert set(verdicts) == {"tf:fp32", "tflite:int8"}
    assert "chosen" in verdicts.values()
    for plot in frame.locator("figure img").all():
        plot.wait_for()
        assert plot.evaluate("img => img.complete && img.naturalWidth > 100")
    assert frame.locator("figure img").count() == 2
    shot(page, "ui-05-run-page.png")

    link = frame.locator("#model-version-link")
    href = link.get_attribute("href")
    assert re.search(rf"/#/models/{re.escape(model.name)}/versions/\d+$", href), href
    with page.context.expect_page() as opened:
        link.click()
    mlflow_page = opened.value
    mlflow_page.wait_for_load_state()
    assert mlflow_page.url == href
    mlflow_page.get_by_text(model.name).first.wait_for()
    shot(mlflow_page, "ui-06-mlflow-model-version.png")
