#!/usr/bin/env bash
# Renders the plain manifests in k8s/ from the Helm chart with its default values (release
# "mtopt", namespace "mtopt"; without the `helm test` pod), one file per template. tests/deploy/test_k8s_manifests.py fails
# when k8s/ and the chart disagree; after changing the chart run:
#   bash scripts/render_k8s.sh
# Apply with: kubectl create namespace mtopt && kubectl apply -n mtopt -f k8s/
#
# One value differs from the defaults: the bundled MinIO's root password, which the chart would
# generate at random on every render; here it is a fixed placeholder. Change it (the Secret in
# k8s/minio.yaml) before applying these files anywhere that matters.
set -euo pipefail
cd "$(dirname "$0")/.."
HELM=${HELM:-${MTOPT_TOOLS_BIN:-$PWD/.tools/bin}/helm}
OUT=${1:-k8s}
if [ ! -x "$HELM" ]; then
  echo "render_k8s.sh: $HELM not found; run bash scripts/install_tools.sh" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$HELM" template mtopt helm/mtopt --namespace mtopt \
  --set minio.auth.rootPassword=change-me-before-use \
  --skip-tests --output-dir "$tmp" >/dev/null
mkdir -p "$OUT"
rm -f "$OUT"/*.yaml
for f in "$tmp"/mtopt/templates/*.yaml; do
  name=$(basename "$f")
  {
    echo "# Rendered by scripts/render_k8s.sh from helm/mtopt (default values): do not edit by hand."
    cat "$f"
  } >"$OUT/$name"
done
echo "render_k8s.sh: wrote $(ls "$OUT"/*.yaml | wc -l) files to $OUT/" >&2
