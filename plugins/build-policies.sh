#!/bin/sh
# build-policies.sh — build mendmq's merge-policy modules reproducibly.
#
# Usage: plugins/build-policies.sh [builtins|c|hostile|examples|check|all]...
#   builtins  Go built-ins (examples/policies/<name>) -> plugins/internal/builtins/<name>.wasm.gz
#             plus SHA256SUMS (of the uncompressed .wasm) and GOVERSION. These are checked in
#             and embedded in the mendmq binary.
#   c         C examples examples/policies/c/<name>/<name>.c -> <name>.wasm (checked in).
#   hostile   Test modules plugins/testdata/hostile/*.wasm from hostile.c and
#             plugins/testdata/stored/probe.wasm from probe.c (checked in).
#   examples  Go examples examples/policies/{jsonmerge,fromstore} -> <name>.wasm (not checked in).
#   check     Rebuild the built-ins into a temporary directory and compare with SHA256SUMS.
#   all       builtins c hostile examples (the default).
#
# Reproducibility: Go modules are built with -trimpath -buildvcs=false -ldflags="-s -w";
# the result depends only on the sources and the Go version (recorded in GOVERSION).
# C modules: clang --target=wasm32 -O2 -ffreestanding -nostdlib -mbulk-memory, linked by
# wasm-ld with --no-entry --strip-all.
set -eu

root=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
cd "$root"

GO=${GO:-go}
CLANG=${CLANG:-clang}
BUILTINS="passthrough putifabsent higherhits latestupdate latestaccess expirationtime discard"
OUT=plugins/internal/builtins
HOSTILE_MODES="loop trap growbomb noexport badversion hugeresult garbage wrongkey failing sandbox"

# go_wasm PKGDIR OUTFILE — the one command every Go policy is built with.
go_wasm() {
	GOOS=wasip1 GOARCH=wasm CGO_ENABLED=0 GOFLAGS=-mod=readonly \
		"$GO" build -buildmode=c-shared -trimpath -buildvcs=false -ldflags="-s -w" -o "$2" "./$1"
}

# c_wasm SRC OUTFILE [extra clang flags] — the one command every C policy is built with.
c_wasm() {
	src=$1 out=$2
	shift 2
	"$CLANG" --target=wasm32 -O2 -ffreestanding -nostdlib -mbulk-memory -Wall -Wextra -Werror \
		-I sdk/c -Wl,--no-entry -Wl,--strip-all "$@" -o "$out" "$src"
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

build_builtins() {
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	: >"$tmp/SHA256SUMS"
	for p in $BUILTINS; do
		go_wasm "examples/policies/$p" "$tmp/$p.wasm"
		gzip -9 -n -c "$tmp/$p.wasm" >"$OUT/$p.wasm.gz"
		echo "$(sha "$tmp/$p.wasm")  $p.wasm" >>"$tmp/SHA256SUMS"
		echo "built $OUT/$p.wasm.gz ($(wc -c <"$tmp/$p.wasm") bytes uncompressed)"
	done
	cp "$tmp/SHA256SUMS" "$OUT/SHA256SUMS"
	"$GO" env GOVERSION >"$OUT/GOVERSION"
	rm -rf "$tmp"
	trap - EXIT
}

check_builtins() {
	want=$(cat "$OUT/GOVERSION")
	have=$("$GO" env GOVERSION)
	if [ "$want" != "$have" ]; then
		echo "check: built-ins were built with $want, this toolchain is $have; results will differ" >&2
		exit 1
	fi
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	for p in $BUILTINS; do
		go_wasm "examples/policies/$p" "$tmp/$p.wasm"
		echo "$(sha "$tmp/$p.wasm")  $p.wasm" >>"$tmp/SHA256SUMS"
	done
	if ! diff -u "$OUT/SHA256SUMS" "$tmp/SHA256SUMS"; then
		echo "check: rebuilt built-ins differ from $OUT/SHA256SUMS: run plugins/build-policies.sh builtins" >&2
		exit 1
	fi
	echo "check: built-ins reproduce $OUT/SHA256SUMS"
	rm -rf "$tmp"
	trap - EXIT
}

build_c() {
	for d in examples/policies/c/*/; do
		n=$(basename "$d")
		c_wasm "$d$n.c" "$d$n.wasm"
		echo "built $d$n.wasm ($(wc -c <"$d$n.wasm") bytes)"
	done
}

build_hostile() {
	h=plugins/testdata/hostile
	for m in $HOSTILE_MODES; do
		c_wasm "$h/hostile.c" "$h/$m.wasm" "-DHOSTILE_$(echo "$m" | tr '[:lower:]' '[:upper:]')"
		echo "built $h/$m.wasm"
	done
	c_wasm plugins/testdata/stored/probe.c plugins/testdata/stored/probe.wasm
	echo "built plugins/testdata/stored/probe.wasm"
}

build_examples() {
	for n in jsonmerge fromstore; do
		go_wasm "examples/policies/$n" "examples/policies/$n/$n.wasm"
		echo "built examples/policies/$n/$n.wasm"
	done
}

[ $# -eq 0 ] && set -- all
for target in "$@"; do
	case $target in
	builtins) build_builtins ;;
	c) build_c ;;
	hostile) build_hostile ;;
	examples) build_examples ;;
	check) check_builtins ;;
	all) build_builtins && build_c && build_hostile && build_examples ;;
	*)
		echo "usage: $0 [builtins|c|hostile|examples|check|all]..." >&2
		exit 2
		;;
	esac
done
