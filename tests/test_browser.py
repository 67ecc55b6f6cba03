"""The course in a real browser: JupyterLab served from the repository, driven by
headless Chromium through Selenium, as a learner would use it.

Three notebooks are opened and run with JupyterLab's own "Run All": the lesson
map (by URL), one exercise notebook (by clicking the lesson map's link to it) and
the lesson with a widget (by URL). A run is
read back from the notebook model in the page: every code cell executed, and no
error output, except that an exercise notebook stops at its first blank, which
must raise the exercise's NotImplementedError (or its checker's "not answered yet")
and nothing else. The widget must
render as a live view (sliders and an image), and pressing an arrow key on a
slider must redraw the image.

Needs `selenium`, `chromium` and `chromedriver` (Debian: apt-get install chromium
chromium-driver); skipped with the reason where one is missing. Notebooks are not
saved: autosave is off in a throwaway settings directory, and the test checks
that the files on disk are unchanged.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
LESSON_MAP = "notebooks/00_lesson_map.ipynb"
EXERCISE = "exercises/01_optimizers_and_tuning.ipynb"
WIDGET_LESSON = "notebooks/03_stacking_hyperoptimizers.ipynb"
BUDGET_S = 300  # the whole test: about 1 min on the quiet 2-core machine, 3 min at load average 10
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium not found (Debian: apt-get install chromium)"),
    pytest.mark.skipif(CHROMEDRIVER is None, reason="chromedriver not found (Debian: apt-get install chromium-driver)"),
]

# Lab settings for the test server only: no autosave (the repository's notebooks must not
# be rewritten with outputs) and every cell in the DOM (no virtual scrolling), so the
# widget is on the page wherever its cell is.
SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}

# The notebook model as JSON: per code cell, its execution count and its outputs' types
# and error names. Read from JupyterLab's app object (exposed with --LabApp.expose_app_in_browser).
CELLS_JS = """
const nb = window.jupyterapp.shell.currentWidget;
const kernel = nb.sessionContext.session && nb.sessionContext.session.kernel;
const cells = [];
for (const cell of nb.content.model.cells) {
  if (cell.type !== 'code') continue;
  const outputs = cell.outputs.toJSON().map(o => [o.output_type, o.ename || '', o.evalue || '']);
  cells.push([cell.executionCount, outputs]);
}
return JSON.stringify({status: kernel ? kernel.status : 'none', cells: cells});
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digest(paths) -> dict:
    return {p: hashlib.sha256((ROOT / p).read_bytes()).hexdigest() for p in paths}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server rooted at the repository on a free port: (base URL, token)."""
    home = tmp_path_factory.mktemp("lab")
    settings = home / "settings"
    for name, value in SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(value))
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--ServerApp.root_dir={ROOT}", f"--IdentityProvider.token={token}",
           f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={home}",
           "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:  # Jupyter refuses root (CI containers) unless told
        cmd.append("--allow-root")
    log = open(home / "server.log", "w")
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("JupyterLab did not start:\n" + (home / "server.log").read_text()[-3000:])
                time.sleep(0.5)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    except WebDriverException as e:
        pytest.skip(f"Chromium could not be started by chromedriver: {e.msg}")
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def _wait(predicate, deadline, what):
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _open_and_run_all(driver, lab, path, deadline, by_url=True):
    """Open `path` (by URL, or wait for a click to have opened it), wait for its kernel,
    Run All, and return the code cells once it settles."""
    base, token = lab
    if by_url:
        driver.get(f"{base}/lab/tree/{path}?token={token}")

    def ready():
        try:
            return driver.execute_script(
                "const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                "return !!(w && w.context && w.context.path === arguments[0] && w.content && w.content.model"
                " && w.sessionContext.session && w.sessionContext.session.kernel"
                " && w.sessionContext.session.kernel.status === 'idle');", path)
        except WebDriverException:
            return False

    _wait(ready, deadline, f"{path} to open with an idle kernel")
    # Clear the stored outputs first, so that nothing read back below predates this run.
    driver.execute_script("return window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs');")
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")

    def settled():
        state = json.loads(driver.execute_script(CELLS_JS))
        pending = [n for n, _ in state["cells"] if n is None]
        errored = any(o[0] == "error" for _, outs in state["cells"] for o in outs)
        # Run All stops at the first error, leaving later cells unexecuted.
        return state if state["status"] == "idle" and (not pending or errored) else None

    time.sleep(1)  # let the first cell be scheduled before polling for idle
    return _wait(settled, deadline, f"{path} to finish running")["cells"]


def _errors(cells):
    return [(i, o[1], o[2]) for i, (_, outs) in enumerate(cells) for o in outs if o[0] == "error"]


def test_lessons_and_an_exercise_run_in_chromium(lab, browser):
    deadline = time.monotonic() + BUDGET_S
    watched = [LESSON_MAP, EXERCISE, WIDGET_LESSON]
    before = _digest(watched)

    cells = _open_and_run_all(browser, lab, LESSON_MAP, deadline)
    assert _errors(cells) == [], f"{LESSON_MAP}: error output in the browser: {_errors(cells)}"
    assert all(n is not None for n, _ in cells), f"{LESSON_MAP}: a cell did not run"

    # The lesson map's relative link reaches the exercise notebook (the server's root is the
    # repository), which runs up to its first blank, and that blank raises the exercise's error.
    # JupyterLab resolves ../exercises/... against the notebook to /files/exercises/...?_xsrf=...
    link = browser.find_element(By.CSS_SELECTOR, f".jp-RenderedMarkdown a[href*='/files/{EXERCISE}?']")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", link)
    link.click()
    cells = _open_and_run_all(browser, lab, EXERCISE, deadline, by_url=False)
    errors = _errors(cells)
    assert errors, f"{EXERCISE}: no exercise blank raised; is exercises/ generated from solutions/?"
    first_cell, ename, evalue = errors[0]
    blank = (ename == "NotImplementedError" and evalue.startswith("Exercise:")) or (
        ename == "ExerciseError" and "not answered yet" in evalue)  # a checker calling the blank
    assert blank, f"{EXERCISE}: cell {first_cell} failed with {ename}: {evalue}, not at an exercise blank"
    assert all(n is not None for n, _ in cells[:first_cell]), f"{EXERCISE}: a cell before the blank did not run"

    cells = _open_and_run_all(browser, lab, WIDGET_LESSON, deadline)
    assert _errors(cells) == [], f"{WIDGET_LESSON}: error output in the browser: {_errors(cells)}"
    assert all(n is not None for n, _ in cells), f"{WIDGET_LESSON}: a cell did not run"

    # The widget is a live view (not the static PNG fallback): sliders and an image.
    notebook = browser.find_element(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden)")
    image = _wait(lambda: notebook.find_elements(By.CSS_SELECTOR, ".widget-vbox .widget-image"),
                  deadline, "the explorer widget to render")[0]
    handles = notebook.find_elements(By.CSS_SELECTOR, ".widget-slider .noUi-handle")
    assert handles, "the explorer rendered without its sliders"
    readout = notebook.find_elements(By.CSS_SELECTOR, ".widget-slider .widget-readout")[0]
    _wait(lambda: image.get_attribute("src"), deadline, "the explorer's first frame")
    first, value = image.get_attribute("src"), readout.text

    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", handles[0])
    handles[0].click()
    handles[0].send_keys(Keys.ARROW_RIGHT)
    _wait(lambda: readout.text != value, deadline, f"the slider to move from {value}")
    _wait(lambda: image.get_attribute("src") != first, deadline, "the image to change after moving a slider")
    cells = json.loads(browser.execute_script(CELLS_JS))["cells"]
    assert _errors(cells) == [], f"moving the slider raised: {_errors(cells)}"

    assert _digest(watched) == before, "the browser session rewrote a notebook on disk"
