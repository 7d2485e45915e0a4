#!/usr/bin/env bash
# Fails, listing the differences, when the generated PodRange code or CRD
# (see hack/update-codegen.sh) is stale: it regenerates into a copy of the
# inputs and compares with the tree.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
generated=(controller/apis controller/generated charts/aliasip/crds)
cd "$root"
mkdir -p "$tmp/hack"
cp go.mod go.sum "$tmp/"
cp hack/boilerplate.go.txt "$tmp/hack/"
for d in "${generated[@]}"; do
	mkdir -p "$tmp/$(dirname "$d")"
	[ -e "$d" ] && cp -a "$d" "$tmp/$d"
done
"$root/hack/update-codegen.sh" "$tmp" >"$tmp.log" 2>&1 || { cat "$tmp.log"; rm -f "$tmp.log"; exit 1; }
rm -f "$tmp.log"
status=0
for d in "${generated[@]}"; do
	diff -ruN "$d" "$tmp/$d" || status=1
done
if [ $status != 0 ]; then
	echo "verify-codegen: generated code is stale; run hack/update-codegen.sh and commit the result" >&2
	exit 1
fi
echo "verify-codegen: ok"
