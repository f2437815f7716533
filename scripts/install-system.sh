#!/usr/bin/env bash
# Installs what nodemesh needs from Debian on a fresh machine (idempotent; needs root):
# BCC and its Python bindings, bpftool, iproute2, kernel headers for BCC, load tools for bench/
# (wrk, hey, iperf3, dnsperf), docker-compose (validates deploy/compose/compose.yaml with `docker-compose config`),
# chromium (the service map page is tested in a real headless browser), prometheus (up --monitoring),
# containernetworking-plugins (the upstream reference CNI plugins in /usr/lib/cni: testkit/kubelet.py chains
# nodemesh-cni after ptp/bridge + host-local exactly as containerd would).
set -euo pipefail

PKGS=(python3-bpfcc libbpfcc bpftool iproute2 python3-venv linux-headers-amd64 iptables nftables iperf3 wrk
      nghttp2-client hey iputils-ping procps psmisc curl dnsperf docker-compose chromium prometheus
      containernetworking-plugins)

# python3-bpfcc is the one Python package nodemesh takes from Debian: BCC's bindings are tied to the
# libbcc of this release and are not on PyPI. The venv does NOT see Debian's site-packages; `make install`
# links only the bcc package directory into it (bcc imports nothing but the standard library and loads
# libbcc.so through ctypes), so everything else comes from pyproject.toml, whatever Debian has installed.
#
# These Debian Python packages are not used by nodemesh. They are installed on purpose, so every CI run
# proves the venv is independent of them (issue #17): with Debian's site-packages visible, pip took
# Debian's requests 2.28 as satisfying the kubernetes client and the suite failed at collection.
# tests/install/test_venv_isolation.py fails if any declared dependency resolves from outside the venv.
PKGS+=(python3-requests python3-yaml python3-cryptography python3-grpcio)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-system: apt-get install ${missing[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# BCC compiles against /lib/modules/$(uname -r)/build. The running kernel ships no headers, so
# point that at Debian's newest header package (its arch dir) and `source` at the -common dir.
K="$(uname -r)"
if [[ ! -e "/lib/modules/$K/build/include" ]]; then
  hdr="$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)"
  common="$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1)"
  mkdir -p "/lib/modules/$K"
  ln -sfn "$hdr" "/lib/modules/$K/build"
  ln -sfn "$common" "/lib/modules/$K/source"
  echo "install-system: /lib/modules/$K/build -> $hdr"
fi

# bpffs for pinned maps.
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
fi
