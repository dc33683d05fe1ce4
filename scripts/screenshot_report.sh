#!/usr/bin/env bash
# Screenshot a report.html with headless Chromium (Debian's `chromium` package), for checking the layout.
#
#   scripts/screenshot_report.sh REPORT_HTML OUT_PNG [WIDTH,HEIGHT]
#
# The page is opened from disk (file://) with networking features off: the report must render
# with no server and no external assets. The PNG is written to a temporary name and renamed when
# complete, so a killed run leaves no half image.
set -euo pipefail

if [ "$#" -lt 2 ] || [ "$#" -gt 3 ]; then
    echo "usage: $0 REPORT_HTML OUT_PNG [WIDTH,HEIGHT]" >&2
    exit 2
fi
html="$1"
out="$2"
size="${3:-1280,2400}"
if [ ! -f "$html" ]; then
    echo "error: $html: file not found" >&2
    exit 2
fi
browser="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
if [ -z "$browser" ]; then
    echo "error: chromium not found (Debian: apt-get install -y chromium)" >&2
    exit 2
fi

html_abs="$(cd "$(dirname "$html")" && pwd)/$(basename "$html")"
out_dir="$(cd "$(dirname "$out")" && pwd)"
profile="$(mktemp -d)"
tmp_png="$(mktemp --suffix=.png "$out_dir/.$(basename "$out").partial-XXXXXX")"
trap 'rm -rf "$profile"; rm -f "$tmp_png"' EXIT

"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$profile" --screenshot="$tmp_png" --window-size="$size" \
    "file://$html_abs" >/dev/null 2>&1 || {
        echo "error: $html: chromium failed to take a screenshot" >&2
        exit 1
    }
if [ ! -s "$tmp_png" ]; then
    echo "error: $html: chromium wrote no screenshot" >&2
    exit 1
fi
mv -f "$tmp_png" "$out"
echo "$out"
