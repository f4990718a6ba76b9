#!/usr/bin/env bash
# Installs what building and testing `lb` needs on a fresh machine, idempotently:
# nightly rust-src (for -Z build-std), bpf-linker linked against rustc's own LLVM
# (see TOOLCHAIN notes in the README), and the Debian packages tests and benchmarks use.
# Each step checks first, so a second run takes well under a second.
set -euo pipefail

need_root() { if [ "$(id -u)" != 0 ]; then echo "bootstrap: run as root (sudo)" >&2; exit 1; fi; }
need_root

# 1. nightly rust-src: aya-build compiles lb-ebpf with `-Z build-std=core`.
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  echo "bootstrap: adding rust-src to nightly"
  # Never `rustup toolchain install nightly` when one exists: that would replace it with
  # a newer nightly (and a newer LLVM) behind the user's back.
  rustc +nightly --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
  rustup component add rust-src --toolchain nightly
fi

# 2. bpf-linker against rustc's own libLLVM. The default build wants a system LLVM that
#    does not match nightly's; a prefix with a dummy llvm-config and a libLLVM.so symlink works.
#    The installed binary keeps an rpath to the prefix, so it lives in a lasting place.
sysroot=$(rustc +nightly --print sysroot)
llvm_so=$(ls "$sysroot"/lib/libLLVM.so.*-rust-* 2>/dev/null | head -1)
llvm_major=$(basename "$llvm_so" | sed -E 's/libLLVM\.so\.([0-9]+)\..*/\1/')
prefix=/usr/local/lib/lb-llvm-prefix
# The binary asks for libLLVM by its soname; a link by that name in the rpath lets it run
# outside rustc too (rustc itself puts its sysroot on the library path).
if [ -d "$prefix/lib" ]; then ln -sf "$llvm_so" "$prefix/lib/$(basename "$llvm_so")"; fi
if ! command -v bpf-linker >/dev/null 2>&1 || ! bpf-linker --version >/dev/null 2>&1 \
   || [ "$(readlink -f "$prefix/lib/libLLVM.so" 2>/dev/null)" != "$(readlink -f "$llvm_so")" ]; then
  echo "bootstrap: building bpf-linker against $llvm_so (about a minute)"
  mkdir -p "$prefix/bin" "$prefix/lib"
  printf '#!/bin/sh\nexit 0\n' > "$prefix/bin/llvm-config"
  chmod +x "$prefix/bin/llvm-config"
  ln -sf "$llvm_so" "$prefix/lib/libLLVM.so"
  ln -sf "$llvm_so" "$prefix/lib/$(basename "$llvm_so")"
  LLVM_PREFIX="$prefix" cargo +stable install --force --locked bpf-linker \
    --no-default-features --features "llvm-$llvm_major" 2>&1 | tail -3
fi

# 3. Debian packages used by tests, the demo and benchmarks.
pkgs=(iproute2 nftables ethtool iputils-ping socat netcat-openbsd curl nginx haproxy wrk nghttp2-client bpftool systemd prometheus bird2 linux-perf)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # nginx/haproxy packages may start system services; benchmarks run their own instances.
  # prometheus is installed for promtool (the alert rules' check); its server is not used.
  # bird2 likewise: the HA tests run one BIRD per namespace with its own config and socket.
  for s in nginx haproxy prometheus bird; do systemctl disable --now "$s" >/dev/null 2>&1 || service "$s" stop >/dev/null 2>&1 || true; done
fi

# 4. bpffs, where the agent pins its program and maps.
if ! mountpoint -q /sys/fs/bpf; then mount -t bpf bpf /sys/fs/bpf; fi
