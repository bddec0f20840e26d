#!/usr/bin/env bash
# Builds the `trellis` binary that ships (packer/, deploy/): a release build optimised with
# a profile of its own hot paths (profile-guided optimisation).
#
#   1. an instrumented release build (target/pgo/generate);
#   2. `pgo-train` (bench/pgo) drives it through a mesh node's traffic: HTTP/1.1 and HTTP/2
#      through one and two proxies, routes, retries, gRPC, TCP, and a three-server cluster
#      taking writes and applies; each process writes its profile when it exits;
#   3. llvm-profdata (rustup's llvm-tools, the LLVM of this rustc) merges the profiles;
#   4. the release build reads them: the binary lands in target/pgo/trellis.
#
# About 25 minutes on 2 cores. The code is the same as `cargo build --release`'s; only the
# compiler's choices of inlining and layout differ (bench/README.md has the numbers).
set -euo pipefail
cd "$(dirname "$0")/.."

host=$(rustc -vV | sed -n 's/^host: //p')
sysroot=$(rustc --print sysroot)
profdata="$sysroot/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  echo "llvm-profdata missing: rustup component add llvm-tools"
  rustup component add llvm-tools
fi

out=$PWD/target/pgo
rm -rf "$out/profiles" "$out/trellis.profdata"
mkdir -p "$out/profiles"

# --target keeps RUSTFLAGS off build scripts and proc macros: only the binary is instrumented.
echo "1/4 instrumented build"
CARGO_TARGET_DIR="$out/generate" RUSTFLAGS="-Cprofile-generate=$out/profiles" \
  cargo build --release --locked --bin trellis --target "$host"

echo "2/4 training"
cargo build --release --locked -p trellis-bench --bin pgo-train
LLVM_PROFILE_FILE="$out/profiles/trellis-%p-%m.profraw" \
  target/release/pgo-train --trellis "$out/generate/$host/release/trellis"

echo "3/4 merging $(ls "$out/profiles" | wc -l) profiles"
"$profdata" merge -o "$out/trellis.profdata" "$out/profiles"

echo "4/4 release build with the profile"
RUSTFLAGS="-Cprofile-use=$out/trellis.profdata" \
  cargo build --release --locked --bin trellis --target "$host"
cp "target/$host/release/trellis" "$out/trellis"
echo "built $out/trellis"
