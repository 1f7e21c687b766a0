#!/usr/bin/env bash
# Builds the benchmarks' peers, what users would run instead of ours, from the Go module proxy into
# ${TSGW_CACHE:-$HOME/.cache/tailscale-gateway}/bin/, reusing binaries already there:
#   controller-runtime-webhook  controller-runtime's webhook.Server validating a Go TailscaleServices
#                               (hack/bench-peers/admission; `cargo bench --bench admission`)
#   sample-apiserver            k8s.io/sample-apiserver, with the etcd and kube-apiserver it runs
#                               against (hack/control-plane.sh; `cargo bench --bench aggregated`)
# The benches run this themselves; CI does not. Versions: hack/bench-peers/versions.env.
# Usage: hack/bench-peers.sh [controller-runtime-webhook|sample-apiserver...]   (all when none are named)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
peers="$here/bench-peers"
cache="${TSGW_CACHE:-$HOME/.cache/tailscale-gateway}"
bin="$cache/bin"
# shellcheck source=hack/bench-peers/versions.env
source "$peers/versions.env"

src="$peers"
# shellcheck source=hack/go-build.sh
source "$here/go-build.sh"

main() {
  components=("$@")
  local c
  for c in "${components[@]}"; do
    [[ "$c" == controller-runtime-webhook || "$c" == sample-apiserver ]] || die "unknown peer $c"
  done
  command -v go >/dev/null || die "needs Go (1.26 or newer) on PATH"
  mkdir -p "$bin"
  echo "bench peers cache: $bin ($(go version))"
  if wanted controller-runtime-webhook; then
    check_pin admission sigs.k8s.io/controller-runtime "$CONTROLLER_RUNTIME_VERSION"
    build controller-runtime-webhook "$CONTROLLER_RUNTIME_VERSION" admission .
  fi
  if wanted sample-apiserver; then
    check_pin sample-apiserver k8s.io/sample-apiserver "$SAMPLE_APISERVER_VERSION"
    build sample-apiserver "$SAMPLE_APISERVER_VERSION" sample-apiserver k8s.io/sample-apiserver
    bash "$here/control-plane.sh" etcd kube-apiserver
  fi
  echo "bench peers ready in $bin"
}

main "$@"
