#!/usr/bin/env bash
# buf lint (STANDARD) and buf breaking against the contract at the previous release tag, or the previous
# commit where there is no tag. The buf CLI comes pinned from npm (tools/buf).
set -euo pipefail
cd "$(dirname "$0")/.."
buf=tools/buf/node_modules/.bin/buf
"$buf" lint
if against=$(git describe --tags --abbrev=0 2>/dev/null); then :; else against=HEAD~1; fi
if git rev-parse --verify --quiet "$against" >/dev/null && git cat-file -e "$against:proto" 2>/dev/null; then
  "$buf" breaking --against ".git#ref=$(git rev-parse "$against")"
  echo "buf: lint clean; no breaking change against $against"
else
  echo "buf: lint clean; no earlier contract to compare with"
fi
