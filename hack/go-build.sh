# shellcheck shell=bash disable=SC2154  # src, bin and components come from the sourcing script
# Sourced by hack/control-plane.sh and hack/bench-peers.sh: pinned Go programs built once into the
# cache and reused. The sourcing script sets `src` (the folder of one go.mod per component), `bin`
# (where binaries go) and `components` (the ones asked for; all when empty).

die() { echo "${0##*/}: $*" >&2; exit 1; }

# check_pin DIR MODULE WANT: the module version that DIR's go.mod pins must be the one versions.env names.
check_pin() {
  local dir="$1" module="$2" want="$3" got
  got="$(cd "$src/$dir" && go list -m -f '{{.Version}}' "$module")"
  [[ "$got" == "$want" ]] || die "hack/${src##*/hack/}/$dir/go.mod pins $module $got, versions.env says $want"
}

# build NAME VERSION DIR PACKAGE [LDFLAGS]: go build PACKAGE in $src/DIR to $bin/NAME-VERSION.
build() {
  local name="$1" version="$2" dir="$3" package="$4" ldflags="${5:-}"
  local out="$bin/$name-$version"
  # Our own Go sources (tsconfig-check, the admission peer) change without a version bump: rebuild
  # when they are newer. (Only when $out exists: `find -newer` of a missing file fails, which set -e
  # would make fatal.)
  if [[ -x "$out" && -z "$(find "$src/$dir" -name '*.go' -newer "$out" | head -1)" ]]; then
    echo "reusing $out"
    return
  fi
  echo "building $name $version (first time: several minutes)…"
  local start=$SECONDS
  (cd "$src/$dir" &&
    CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath -mod=readonly -buildvcs=false" \
      nice -n "${TSGW_NICE:-10}" go build -ldflags "-s -w $ldflags" -o "$out.tmp" "$package")
  mv "$out.tmp" "$out"
  echo "built $out in $((SECONDS - start))s"
}

# wanted NAME: whether NAME is among the components asked for (all when none are named).
wanted() {
  [[ ${#components[@]} -eq 0 ]] && return 0
  local c
  for c in "${components[@]}"; do [[ "$c" == "$1" ]] && return 0; done
  return 1
}
