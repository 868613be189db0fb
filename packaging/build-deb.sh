#!/usr/bin/env bash
# Builds target/debian/sigrelay_VERSION_ARCH.deb: first the man page and shell completions from
# the clap definition (examples/gen-assets.rs, into target/assets/), then `cargo deb`, which
# makes the release build and packs what [package.metadata.deb] in Cargo.toml lists.
# Needs cargo-deb: cargo install --locked cargo-deb. Arguments go to cargo deb (e.g. --no-build).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --example gen-assets -- target/assets >/dev/null
cargo deb "$@"
