#!/usr/bin/env bash
# CI: builds the documentation site (tools/build_docs.sh: mkdocs --strict, so
# broken links and unresolved references fail), then renders the home page
# and two API reference pages in headless Chromium and fails unless they
# render: the DOM after the theme's JavaScript ran holds the expected headings
# and names, and the screenshots are real images.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash tools/build_docs.sh
echo "== docs built in $(( $(date +%s) - start )) s"

browser=""
for name in chromium chromium-browser google-chrome; do
  if command -v "$name" >/dev/null; then browser=$name; break; fi
done
if [ -z "$browser" ]; then
  echo "== installing chromium"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
  browser=chromium
fi

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
SITE="$(pwd)/site"
chrome() {
  timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --hide-scrollbars --user-data-dir="$OUT/profile" --window-size=1280,1000 \
    --virtual-time-budget=5000 "$@" 2>>"$OUT/chromium.log"
}
fail() {
  echo "docs check FAILED: $*" >&2
  grep -v dbus "$OUT/chromium.log" | tail -20 >&2 || true
  exit 1
}
# check PAGE NEEDLE...: the rendered DOM of site/PAGE contains every needle
# (fixed strings), and the theme's JavaScript ran (Material marks <html>).
check() {
  local page=$1; shift
  [ -f "$SITE/$page" ] || fail "site/$page was not built"
  local dom="$OUT/$(echo "$page" | tr / _).dom"
  chrome --dump-dom "file://$SITE/$page" >"$dom" || fail "chromium could not render site/$page"
  grep -q 'class="[^"]*md-header' "$dom" || fail "site/$page: no Material header in the DOM"
  grep -q '<html[^>]*class="[^"]*js' "$dom" || fail "site/$page: the theme's JavaScript did not run"
  for needle in "$@"; do
    grep -qF -- "$needle" "$dom" || fail "site/$page: '$needle' missing from the rendered page"
  done
  echo "   site/$page renders ($(wc -c <"$dom") bytes of DOM)"
}
# screenshot PAGE: a PNG of the page that is more than a blank canvas.
screenshot() {
  local png="$OUT/$(echo "$1" | tr / _).png"
  chrome --screenshot="$png" "file://$SITE/$1" >/dev/null || fail "no screenshot of site/$1"
  [ -f "$png" ] || fail "no screenshot of site/$1"
  local size
  size=$(wc -c <"$png")
  [ "$size" -gt 20000 ] || fail "the screenshot of site/$1 is only $size bytes (a blank page?)"
  [ -n "${DOCS_SCREENSHOTS:-}" ] && mkdir -p "$DOCS_SCREENSHOTS" && cp "$png" "$DOCS_SCREENSHOTS/"
  echo "   site/$1 screenshot: $size bytes"
}

check index.html '<h1 id="sparse_ops">sparse_ops<' 'Ten lines' 'Where to go next' \
  'Spatially sparse tensor networks for TensorFlow'
check api/sparse_ops.html 'id="sparse_ops.geometry.kernel_offsets"' 'kernel_offsets' \
  'id="sparse_ops.tensor.SparseTensor"'
check api/layers.html '<h1 id="sparse_opslayers">sparse_ops.layers<' \
  'id="sparse_ops.layers.Conv"' 'id="sparse_ops.layers.ConvTranspose"' 'filters'
screenshot index.html
screenshot api/layers.html
echo "== docs check passed in $(( $(date +%s) - start )) s"
