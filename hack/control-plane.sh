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

src="$here/control-plane"
# shellcheck source=hack/go-build.sh
source "$here/go-build.sh"

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
