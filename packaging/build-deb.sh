#!/usr/bin/env bash
# Builds target/debian/sigrelay_VERSION_ARCH.deb: first the man page and shell completions from
# the clap definition (examples/gen-assets.rs, into target/assets/), then `cargo deb`, which
# makes the release build and packs what [package.metadata.deb] in Cargo.toml lists.
# Needs cargo-deb: cargo install --locked cargo-deb. Arguments go to cargo deb (e.g. --no-build).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --example gen-assets -- target/assets >/dev/null
# Debian wants a changelog; this one names the version and the commit, dated by the commit (so
# the same checkout packs the same bytes).
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
maintainer=$(sed -n 's/^maintainer = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
commit=$(git rev-parse --short HEAD 2>/dev/null || true)
date=$(git log -1 --format=%aD 2>/dev/null || date -R)
{
    echo "sigrelay ($version) unstable; urgency=medium"
    echo
    echo "  * sigrelay $version${commit:+ (git commit $commit)}; see README.md."
    echo
    echo " -- $maintainer  $date"
} >target/assets/changelog
cargo deb "$@"
