# What the web-console tests need: Debian's chromium (a browser is never downloaded) and
# Playwright's Python package (its driver ships inside the wheel).
# .ci/run sources this file; it also runs on its own: bash .ci/browser-setup.sh
_interlock_browser_setup() {
  local sudo="" py="${BROWSER_SETUP_PYTHON:-.venv/bin/python}"
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium chromium-driver
  fi
  chromium --version
  if [ ! -x "$py" ]; then py="python3"; fi
  if ! "$py" -c "import playwright" >/dev/null 2>&1; then
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$py" -m pip install -q "playwright>=1.45"
  fi
}
_interlock_browser_setup
unset -f _interlock_browser_setup
