#!/usr/bin/env bash
# Builds the pinned real control plane (etcd, kube-apiserver, kube-controller-manager, Envoy Gateway),
# tsconfig-check (tailscale.com's own loaders, for the proxies' generated configs) and helm (for the
# chart in charts/)
# from the Go module proxy into ${TSGW_CACHE:-$HOME/.cache/tailscale-gateway}/bin/, reusing binaries
# already there. Versions: hack/control-plane/versions.env; dependency graphs: hack/control-plane/*/go.mod.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${TSGW_CACHE:-$HOME/.cache/tailscale-gateway}"
bin="$cache/bin"
# shellcheck source=hack/control-plane/versions.env
source "$here/control-plane/versions.env"

die() { echo "control-plane.sh: $*" >&2; exit 1; }

# The module version that the component's go.mod pins must be the one versions.env names.
check_pin() {
  local dir="$1" module="$2" want="$3" got
  got="$(cd "$here/control-plane/$dir" && go list -m -f '{{.Version}}' "$module")"
  [[ "$got" == "$want" ]] || die "hack/control-plane/$dir/go.mod pins $module $got, versions.env says $want"
}

# build NAME VERSION DIR PACKAGE [LDFLAGS]: go build PACKAGE in hack/control-plane/DIR to $bin/NAME-VERSION.
build() {
  local name="$1" version="$2" dir="$3" package="$4" ldflags="${5:-}"
  local out="$bin/$name-$version"
  # Our own Go sources (tsconfig-check) change without a version bump: rebuild when they are newer.
  # (Only when $out exists: `find -newer` of a missing file fails, which set -e would make fatal.)
  if [[ -x "$out" && -z "$(find "$here/control-plane/$dir" -name '*.go' -newer "$out" | head -1)" ]]; then
    echo "reusing $out"
    return
  fi
  echo "building $name $version (first time: several minutes)…"
  local start=$SECONDS
  (cd "$here/control-plane/$dir" &&
    CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath -mod=readonly -buildvcs=false" \
      nice -n "${TSGW_NICE:-10}" go build -ldflags "-s -w $ldflags" -o "$out.tmp" "$package")
  mv "$out.tmp" "$out"
  echo "built $out in $((SECONDS - start))s"
}

kube_ldflags() {
  local v="$KUBERNETES_VERSION" minor
  minor="$(cut -d. -f2 <<<"$v")"
  local p=k8s.io/component-base/version
  echo "-X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean" \
    "-X $p.buildDate=1970-01-01T00:00:00Z"
}

# Envoy Gateway's CRDs from the pinned module (Gateway API's experimental channel, a superset of the
# standard one, and gateway.envoyproxy.io's own), as one file beside the binary for the tests.
eg_crds() {
  local out="$bin/envoy-gateway-crds-$ENVOY_GATEWAY_VERSION.yaml"
  if [[ -s "$out" ]]; then
    echo "reusing $out"
    return
  fi
  local dir
  dir="$(cd "$here/control-plane/envoy-gateway" && go mod download github.com/envoyproxy/gateway &&
    go list -m -f '{{.Dir}}' github.com/envoyproxy/gateway)"
  [[ -d "$dir" ]] || die "no module directory for github.com/envoyproxy/gateway"
  local crds="$dir/charts/gateway-helm/charts/crds/crds"
  cat "$crds/gatewayapi-crds.yaml" "$crds"/generated/*.yaml >"$out.tmp"
  mv "$out.tmp" "$out"
  echo "wrote $out"
}

# wanted NAME: whether NAME is among the components asked for (all when none are named).
wanted() {
  [[ ${#components[@]} -eq 0 ]] && return 0
  local c
  for c in "${components[@]}"; do [[ "$c" == "$1" ]] && return 0; done
  return 1
}

# Usage: hack/control-plane.sh [COMPONENT...]   (etcd kube-apiserver kube-controller-manager envoy-gateway
# tsconfig-check helm; all when none are named)
main() {
  components=("$@")
  command -v go >/dev/null || die "needs Go (1.26 or newer) on PATH"
  mkdir -p "$bin"
  echo "control plane cache: $bin ($(go version))"
  check_pin etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
  check_pin kubernetes k8s.io/kubernetes "$KUBERNETES_VERSION"
  check_pin envoy-gateway github.com/envoyproxy/gateway "$ENVOY_GATEWAY_VERSION"
  check_pin tsconfig-check tailscale.com "$TAILSCALE_VERSION"
  check_pin helm helm.sh/helm/v4 "$HELM_VERSION"
  if wanted etcd; then build etcd "$ETCD_VERSION" etcd go.etcd.io/etcd/server/v3; fi
  if wanted kube-apiserver; then
    build kube-apiserver "$KUBERNETES_VERSION" kubernetes k8s.io/kubernetes/cmd/kube-apiserver "$(kube_ldflags)"
  fi
  if wanted kube-controller-manager; then
    build kube-controller-manager "$KUBERNETES_VERSION" kubernetes \
      k8s.io/kubernetes/cmd/kube-controller-manager "$(kube_ldflags)"
  fi
  if wanted envoy-gateway; then
    build envoy-gateway "$ENVOY_GATEWAY_VERSION" envoy-gateway github.com/envoyproxy/gateway/cmd/envoy-gateway \
      "-X github.com/envoyproxy/gateway/internal/cmd/version.envoyGatewayVersion=$ENVOY_GATEWAY_VERSION"
    eg_crds
  fi
  if wanted tsconfig-check; then build tsconfig-check "$TAILSCALE_VERSION" tsconfig-check .; fi
  if wanted helm; then
    build helm "$HELM_VERSION" helm helm.sh/helm/v4/cmd/helm \
      "-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
  fi
  echo "control plane ready in $bin"
}

main "$@"
