#!/usr/bin/env bash
# Debian packages some tests need beyond pip: a virtual screen (Xvfb) and the X/OpenGL
# libraries Qt loads, for the napari screenshot test; Graphviz, for DAG pictures drawn with
# `dot` (a pure-Python drawing is the fallback, tested as well); Chromium, to load and
# screenshot the run report headless. Installs only what is missing,
# with apt-get as root or through password-less sudo. Where that is impossible it says
# so and carries on: those tests then skip with the reason.
set -uo pipefail

packages=(
  xvfb xauth
  libgl1 libegl1 libgl1-mesa-dri libdbus-1-3 libfontconfig1 libxkbcommon-x11-0
  libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
  libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1
  graphviz chromium fonts-dejavu-core
)

if ! command -v apt-get >/dev/null || ! command -v dpkg-query >/dev/null; then
  echo "system packages: no apt-get here; install Xvfb, Qt's X libraries, Graphviz and Chromium yourself, or the napari, Graphviz and Chromium tests skip" >&2
  exit 0
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then as_root=(); elif sudo -n true 2>/dev/null; then as_root=(sudo -n); else
  echo "system packages: not root and no password-less sudo; missing: ${missing[*]} (the napari, Graphviz and Chromium tests skip)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "system packages: installing ${missing[*]}" >&2
if ! "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
  "${as_root[@]}" apt-get update -qq >/dev/null 2>&1
  "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || echo "system packages: apt-get could not install ${missing[*]} (the napari, Graphviz and Chromium tests skip)" >&2
fi
exit 0
