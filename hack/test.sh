#!/usr/bin/env bash
# The test command: builds (or reuses) the pinned real control plane with hack/control-plane.sh,
# then runs the whole suite, the real-cluster tests (ignored in plain `cargo test`) included.
#   hack/test.sh                              everything
#   hack/test.sh --test real_cluster          cargo's arguments before `--`,
#   hack/test.sh --test real_cluster -- webhooks   the test binaries' after it
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo_args=()
test_args=()
while (($#)); do
  if [[ "$1" == "--" ]]; then
    shift
    test_args=("$@")
    break
  fi
  cargo_args+=("$1")
  shift
done

# What the tests start: all of it. Envoy Gateway (tests/real_envoy_gateway.rs) is the longest cold build
# after kube-apiserver: 777 s measured on the 2-core machine with an empty Go build cache (modules
# already downloaded) while a cargo build shared it; seconds once cached. helm (tests/helm.rs): 371 s cold,
# measured the same way (empty Go build cache, modules downloaded, a cargo build beside it).
needed=(etcd kube-apiserver kube-controller-manager envoy-gateway tsconfig-check helm)
echo "==> hack/control-plane.sh ${needed[*]}: building or reusing what the real-cluster tests start"
bash hack/control-plane.sh "${needed[@]}"
echo "==> cargo test ${cargo_args[*]} -- --include-ignored ${test_args[*]}"
exec cargo test "${cargo_args[@]}" -- --include-ignored "${test_args[@]}"
