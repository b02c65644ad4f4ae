#!/usr/bin/python3
"""Opens Matomo pages in a headless Chromium as a person would: logs in through Matomo's login
form, opens each page, waits until Matomo has rendered it, saves a screenshot, and prints what
the page shows as JSON (its visible text, and the data-* attributes of elements a test names).

Run with Debian's /usr/bin/python3 (python3-selenium), chromium and chromium-driver.

usage: browser.py SPEC.json   where SPEC is
  {"base": "http://127.0.0.1:PORT/", "login": "...", "password": "...", "out": "DIR",
   "pages": [{"name": "fleet", "url": "index.php?...", "wait_for": "CSS", "collect": {"key": "CSS"}}]}
prints {"pages": {"fleet": {"title": ..., "text": ..., "screenshot": PATH, "collect": {"key": [{attr: value}, ...]}}}}
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


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    os.makedirs(spec["out"], exist_ok=True)
    browser = driver()
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
