#!/usr/bin/env bash
# Screenshots a run's report with headless Chromium, to check that the page renders:
#   scripts/check-report.sh data-out/<run> [out.png]
# Installs Chromium from the Debian packages when it is missing (needs root or sudo).
set -euo pipefail
run=${1:?usage: scripts/check-report.sh data-out/<run> [out.png]}
shot=${2:-$run/report/screenshot.png}
page=$(realpath "$run/report/report.html")
[ -f "$page" ] || { echo "no $page: run 'pipeline report $run' first" >&2; exit 1; }
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    sudo=$( [ "$(id -u)" = 0 ] && echo "" || echo sudo )
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium
    browser=$(command -v chromium)
fi
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size=1200,4000 --screenshot="$shot" "file://$page" 2>/dev/null
echo "screenshot: $shot"
