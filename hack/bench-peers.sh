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

die() { echo "bench-peers.sh: $*" >&2; exit 1; }

# The module version that the peer's go.mod pins must be the one versions.env names.
check_pin() {
  local dir="$1" module="$2" want="$3" got
  got="$(cd "$peers/$dir" && go list -m -f '{{.Version}}' "$module")"
  [[ "$got" == "$want" ]] || die "hack/bench-peers/$dir/go.mod pins $module $got, versions.env says $want"
}

# build NAME VERSION DIR PACKAGE: go build PACKAGE in hack/bench-peers/DIR to $bin/NAME-VERSION,
# again when our Go sources or the go.mod there are newer than the binary.
build() {
  local name="$1" version="$2" dir="$3" package="$4"
  local out="$bin/$name-$version"
  if [[ -x "$out" && -z "$(find "$peers/$dir" \( -name '*.go' -o -name go.mod \) -newer "$out" | head -1)" ]]; then
    echo "reusing $out"
    return
  fi
  echo "building $name $version (first time: a few minutes; Go prints nothing meanwhile)…"
  local start=$SECONDS
  (cd "$peers/$dir" &&
    CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath -mod=readonly -buildvcs=false" \
      nice -n "${TSGW_NICE:-10}" go build -ldflags "-s -w" -o "$out.tmp" "$package")
  mv "$out.tmp" "$out"
  echo "built $out in $((SECONDS - start))s"
}

wanted() {
  [[ ${#components[@]} -eq 0 ]] && return 0
  local c
  for c in "${components[@]}"; do [[ "$c" == "$1" ]] && return 0; done
  return 1
}

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
