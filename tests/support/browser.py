#!/usr/bin/python3
"""Opens Matomo pages in a headless Chromium as a person would: logs in through Matomo's login
form, opens each page, waits until Matomo has rendered it, saves a screenshot, and prints what
the page shows as JSON (its visible text, and the data-* attributes of elements a test names).

Run with Debian's /usr/bin/python3 (python3-selenium), chromium and chromium-driver.

usage: browser.py SPEC.json   where SPEC is
  {"base": "http://127.0.0.1:PORT/", "login": "...", "password": "...", "out": "DIR",
   "pages": [{"name": "fleet", "url": "index.php?...", "wait_for": "CSS", "collect": {"key": "CSS"}}]}
prints {"pages": {"fleet": {"title": ..., "text": ..., "screenshot": PATH, "collect": {"key": [{attr: value}, ...]}}}}

With "interactive": true in SPEC it logs in, prints {"ready": true} and then takes one JSON
command a line on stdin, answering each with one JSON line on stdout, so a test can change the
world (start or kill an archiver) while the page stays open:
  {"op": "open", "url": ..., "wait_for": CSS}   opens a page and marks its window (a reload would lose the mark)
  {"op": "wait", "css": CSS, "collect": {...}, "screenshot": NAME}   waits until CSS matches (the page
      refreshes itself), then answers {"marked": bool, "refreshes": N, "text": ..., "collect": ..., "screenshot": PATH}
  {"op": "quit"}
"""

import json
import os
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

WAIT_SECONDS = 30


def driver():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--lang=en-US"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def login(browser, spec):
    browser.get(spec["base"] + "index.php?module=Login")
    wait = WebDriverWait(browser, WAIT_SECONDS)
    wait.until(ec.visibility_of_element_located((By.ID, "login_form_login"))).send_keys(spec["login"])
    browser.find_element(By.ID, "login_form_password").send_keys(spec["password"])
    browser.find_element(By.ID, "login_form_submit").click()
    # Logged in once the login form is gone.
    wait.until(ec.invisibility_of_element_located((By.ID, "login_form_login")))


def collect(browser, css):
    found = []
    for element in browser.find_elements(By.CSS_SELECTOR, css):
        attrs = browser.execute_script(
            "const a = {}; for (const x of arguments[0].attributes) { if (x.name.startsWith('data-')) a[x.name.slice(5)] = x.value; }"
            " return a;", element)
        attrs["text"] = element.text
        # How Matomo shows a status: its icon font classes (icon-ok, icon-warning, icon-error).
        attrs["icons"] = browser.execute_script(
            "return [...arguments[0].querySelectorAll('[class*=\"icon-\"]')].flatMap("
            "e => [...e.classList].filter(c => c.startsWith('icon-')));", element)
        found.append(attrs)
    return found


def full_screenshot(browser, path):
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, min(max(height + 50, 1000), 6000))
    browser.save_screenshot(path)
    browser.set_window_size(1400, 1000)


def interactive(browser, spec):
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        answer = {}
        if command["op"] == "quit":
            break
        if command["op"] == "open":
            browser.get(spec["base"] + command["url"])
            WebDriverWait(browser, WAIT_SECONDS).until(
                ec.visibility_of_element_located((By.CSS_SELECTOR, command["wait_for"])))
            browser.execute_script("window.archiveClaimTestMark = 'not reloaded';")
        elif command["op"] == "wait":
            # Generous: the page refreshes every few seconds and the machine may be busy; this
            # is a wait for something to appear, not a measurement.
            WebDriverWait(browser, command.get("timeout", 90)).until(
                ec.presence_of_element_located((By.CSS_SELECTOR, command["css"])))
            answer = {
                "marked": browser.execute_script("return window.archiveClaimTestMark === 'not reloaded';"),
                "refreshes": int(browser.execute_script(
                    "var b = document.getElementById('archiveclaim-live'); return b ? b.getAttribute('data-refreshes') : -1;") or -1),
                "text": browser.find_element(By.TAG_NAME, "body").text,
                "collect": {key: collect(browser, css) for key, css in command.get("collect", {}).items()},
            }
            if command.get("screenshot"):
                answer["screenshot"] = os.path.join(spec["out"], command["screenshot"] + ".png")
                full_screenshot(browser, answer["screenshot"])
        print(json.dumps(answer), flush=True)


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    os.makedirs(spec["out"], exist_ok=True)
    browser = driver()
    if spec.get("interactive"):
        try:
            login(browser, spec)
            interactive(browser, spec)
        finally:
            browser.quit()
        return
    result = {"pages": {}}
    try:
        login(browser, spec)
        for page in spec["pages"]:
            browser.get(spec["base"] + page["url"])
            WebDriverWait(browser, WAIT_SECONDS).until(
                ec.visibility_of_element_located((By.CSS_SELECTOR, page["wait_for"])))
            # The whole page in the screenshot: the window as tall as the document.
            height = browser.execute_script("return document.documentElement.scrollHeight")
            browser.set_window_size(1400, min(max(height + 50, 1000), 6000))
            shot = os.path.join(spec["out"], page["name"] + ".png")
            browser.save_screenshot(shot)
            result["pages"][page["name"]] = {
                "title": browser.title,
                "text": browser.find_element(By.TAG_NAME, "body").text,
                "screenshot": shot,
                "collect": {key: collect(browser, css) for key, css in page.get("collect", {}).items()},
            }
            browser.set_window_size(1400, 1000)
    finally:
        browser.quit()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
