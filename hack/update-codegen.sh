#!/usr/bin/env bash
# Regenerates the code and manifests derived from the PodRange API types in
# controller/apis/aliasip/v1alpha1, idempotently:
#   - deepcopy functions (zz_generated.deepcopy.go), and the typed clientset,
#     listers and informers in controller/generated, with
#     k8s.io/code-generator's kube_codegen.sh;
#   - the CustomResourceDefinition (with its CEL validation, status
#     subresource and printer columns) in charts/aliasip/crds, with
#     controller-gen.
# The generator versions are pinned in hack/codegen/go.mod; the tools are
# built once into the cache (ALIASIP_CACHE, as hack/deps.sh).
#
# Usage: hack/update-codegen.sh [ROOT]   (ROOT: the tree to regenerate,
# default this repository; hack/verify-codegen.sh passes a copy.)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "${1:-$here/..}" && pwd)
cache=${ALIASIP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aliasip}
module=github.com/aliasip/aliasip

codegen_version=$(awk '$1 == "k8s.io/code-generator" {print $2; exit}' "$here/codegen/go.mod")
controller_tools_version=$(awk '$1 == "sigs.k8s.io/controller-tools" {print $2; exit}' "$here/codegen/go.mod")
export GOBIN="$cache/codegen/$codegen_version-$controller_tools_version"
mkdir -p "$GOBIN"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local

codegen_dir=$(cd "$here/codegen" && go mod download -json k8s.io/code-generator | awk -F'"' '$2 == "Dir" {print $4}')
if [ ! -x "$GOBIN/controller-gen" ]; then
	(cd "$here/codegen" && go build -trimpath -o "$GOBIN/controller-gen" sigs.k8s.io/controller-tools/cmd/controller-gen)
fi

# kube_codegen.sh installs its generators into $GOBIN from its own module.
# shellcheck source=/dev/null
source "$codegen_dir/kube_codegen.sh"

cd "$root"
boilerplate="$root/hack/boilerplate.go.txt"
kube::codegen::gen_helpers --boilerplate "$boilerplate" "$root/controller/apis"
# NodeBlocks is its own plural (the CRD's plural is nodeblocks).
kube::codegen::gen_client \
	--with-watch \
	--plural-exceptions "Endpoints:Endpoints,NodeBlocks:NodeBlocks" \
	--output-dir "$root/controller/generated" \
	--output-pkg "$module/controller/generated" \
	--boilerplate "$boilerplate" \
	"$root/controller/apis"

# controller-gen writes the CRD as <group>_<plural>.yaml.
"$GOBIN/controller-gen" crd paths=./controller/apis/... output:crd:artifacts:config=charts/aliasip/crds
echo "codegen: ok"
