#!/usr/bin/env bash
# Installs the CPU libtorch 2.13.0 that tch 0.26 links against, with no manual step.
#
# PyPI's torch==2.13.0 wheel is a CUDA build; a CPU-only libtorch is cut from it:
# the headers, libtorch_cpu.so, libc10.so, libgomp.so.1 and the two CUDA runtime
# libraries libtorch_cpu.so needs at load time (libcudart.so.13, libcupti.so.13).
# The wheel's libtorch.so only pulls in libtorch_cuda.so, so it is replaced by an empty
# shared library (torch-sys links with -ltorch).
#
# The library is unpacked once per user into $LSP_CACHE (default ~/.cache/lsp) and the
# repository's `.libtorch` is a symlink to it; `.cargo/config.toml` points torch-sys at
# `.libtorch` and sets an rpath, so neither build nor run needs environment variables.
#
# Usage:
#   scripts/install-libtorch.sh              # CPU libtorch (idempotent)
#   scripts/install-libtorch.sh --link DIR   # use an existing libtorch 2.13.0 (e.g. CUDA)
set -euo pipefail

VERSION=2.13.0
CUDART=13.0.96
CUPTI=13.0.85
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
link="$repo/.libtorch"

say() { echo "install-libtorch: $*" >&2; }
die() { say "error: $*"; exit 1; }

if [ "${1:-}" = "--link" ]; then
  dir=${2:?"--link needs the libtorch folder (the one holding lib/ and include/)"}
  dir=$(cd "$dir" && pwd)
  [ -f "$dir/lib/libtorch_cpu.so" ] || die "$dir/lib/libtorch_cpu.so not found: not a libtorch folder"
  got=$(cat "$dir/build-version" 2>/dev/null || echo unknown)
  case "$got" in "$VERSION"*) ;; *) die "$dir is libtorch $got; tch 0.26 needs $VERSION" ;; esac
  ln -sfn "$dir" "$link"
  say "linked $link -> $dir"
  exit 0
fi
[ $# -eq 0 ] || die "unknown argument '$1' (usage: $0 [--link DIR])"

cache=${LSP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lsp}
dest="$cache/libtorch-$VERSION-cpu"
if [ -f "$dest/.complete" ]; then
  ln -sfn "$dest" "$link"
  say "libtorch $VERSION already installed in $dest"
  exit 0
fi

command -v python3 >/dev/null || die "python3 is needed to download the torch wheel"
python3 -m pip --version >/dev/null 2>&1 || die "pip is needed: install python3-pip"
command -v cc >/dev/null || die "a C compiler (cc) is needed to build the empty libtorch.so"

mkdir -p "$cache"
stage=$(mktemp -d "$cache/.libtorch-staging.XXXXXX")
trap 'rm -rf "$stage"' EXIT
say "downloading torch==$VERSION (about 540 MB) into $stage"
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$stage/wheels" "torch==$VERSION" "nvidia-cuda-runtime==$CUDART" "nvidia-cuda-cupti==$CUPTI" \
  || die "pip could not download the wheels: is the package registry reachable?"

mkdir -p "$stage/libtorch/lib"
python3 - "$stage" <<'PY'
import glob, os, shutil, sys, zipfile
stage = sys.argv[1]
out = os.path.join(stage, "libtorch")
keep_lib = {"libtorch_cpu.so", "libc10.so", "libgomp.so.1", "libcudart.so.13", "libcupti.so.13"}
found = set()
for wheel in glob.glob(os.path.join(stage, "wheels", "*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            base = os.path.basename(name)
            if name.startswith("torch/include/") and not name.endswith("/"):
                target = os.path.join(out, name[len("torch/"):])
            elif base in keep_lib and "/lib/" in name:
                target = os.path.join(out, "lib", base)
                found.add(base)
            else:
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
missing = keep_lib - found
if missing:
    sys.exit(f"install-libtorch: error: the wheels lack {sorted(missing)}")
PY
cc -shared -x c /dev/null -o "$stage/libtorch/lib/libtorch.so"
echo "$VERSION" >"$stage/libtorch/build-version"
touch "$stage/libtorch/.complete"

rm -rf "$dest"
mv "$stage/libtorch" "$dest"
ln -sfn "$dest" "$link"
say "installed libtorch $VERSION (CPU) in $dest ($(du -sh "$dest" | cut -f1))"
