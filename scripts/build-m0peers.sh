#!/usr/bin/env bash
# Builds tests/motr-peers/hax-m0peers (many processes' HA links from one
# process) against the Motr installed in MOTR_PREFIX (default /opt/motr),
# with the defines Motr is built with, as hax-sys's glue; prints its path.
#
#   scripts/build-m0peers.sh [OUTPUT]    # default target/motr/hax-m0peers
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${MOTR_PREFIX:-/opt/motr}"
out="${1:-$repo_root/target/motr/hax-m0peers}"
if [ ! -e "$prefix/lib/libmotr.so" ]; then
    echo "build-m0peers: no Motr in $prefix (scripts/install-motr.sh)" >&2
    exit 2
fi
mkdir -p "$(dirname "$out")"
${CC:-cc} -std=gnu11 -O2 -g -isystem "$prefix/include/motr" -include config.h \
    -D_REENTRANT -DM0_INTERNAL= -DM0_EXTERN=extern -Wno-attributes -Wall -Wextra -Werror \
    -o "$out" "$repo_root/tests/motr-peers/hax-m0peers.c" -L"$prefix/lib" -lmotr -lpthread
echo "$out"
