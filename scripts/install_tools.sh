#!/usr/bin/env bash
# Installs the external tools the test suite needs into a project-local bin directory
# (.tools/bin, gitignored) with `go install`, each only if it is missing or at another version.
# Usage: bash scripts/install_tools.sh            # installs everything
#        MTOPT_TOOLS_BIN=/some/dir bash scripts/install_tools.sh
# Tests find the binaries through MTOPT_TOOLS_BIN (default <repo>/.tools/bin).
# Installs: minio (services tests), helm and helm-unittest (chart tests under tests/deploy),
# and the Debian package `prometheus` (prometheus + promtool on PATH, tests/deploy/test_prometheus.py).
set -euo pipefail
cd "$(dirname "$0")/.."

# MinIO publishes RELEASE.* tags that are not semver, so the Go module proxy serves it as a
# pseudo-version. This one is MinIO's master of 2026-02-12 (commit 7aac2a2c5b7c).
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
# Helm 3 (the chart is apiVersion v2) and the helm-unittest plugin (v1.0.1 is the newest tag
# that `go install` accepts; later tags carry replace directives).
HELM_VERSION=v3.22.0
HELM_UNITTEST_VERSION=v1.0.1

BIN=${MTOPT_TOOLS_BIN:-$PWD/.tools/bin}
mkdir -p "$BIN"

if ! command -v go >/dev/null 2>&1; then
  echo "install_tools.sh: 'go' is not on PATH; install Go >= 1.24 (needed to build MinIO)" >&2
  exit 1
fi

# go_install NAME MODULE VERSION [LDFLAGS]: builds MODULE@VERSION into $BIN unless
# $BIN/NAME.version already records that version and those ldflags (a stamp file, because
# minio's own --version differs from the module version).
go_install() {
  local name=$1 module=$2 version=$3 ldflags=${4:-}
  local stamp="$BIN/$name.version"
  local want="$module@$version${ldflags:+ ldflags: $ldflags}"
  if [ -x "$BIN/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  echo "install_tools.sh: building $module@$version into $BIN (this can take several minutes)" >&2
  GOBIN="$BIN" GOFLAGS="${GOFLAGS:-} -buildvcs=false" go install ${ldflags:+-ldflags="$ldflags"} "$module@$version"
  echo "$want" >"$stamp"
}

go_install minio github.com/minio/minio "$MINIO_VERSION"
# Helm's release build stamps its version and the Kubernetes version it assumes for `helm
# template`/`lint` (.Capabilities.KubeVersion, the minor of its client-go: 1.37 for v3.22.0)
# with -X; a plain `go install` would leave v1.20, which the chart's kubeVersion refuses.
HELM_LDFLAGS="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in pkg/chartutil pkg/lint/rules; do
  HELM_LDFLAGS="$HELM_LDFLAGS -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=37"
done
go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "$HELM_LDFLAGS"
# The checksum database does not know helm-unittest v1.0.1 (a 404 from sum.golang.org), so its
# own module is fetched without that check; its dependencies are still verified.
GONOSUMDB=github.com/helm-unittest go_install helm-unittest github.com/helm-unittest/helm-unittest/cmd/helm-unittest "$HELM_UNITTEST_VERSION"

# helm-unittest also as a Helm plugin directory (offline: no `helm plugin install` download), so
# `HELM_PLUGINS=.tools/helm-plugins helm unittest CHART` works like on a developer's machine.
# The tests call the binary directly.
PLUGIN_DIR=${MTOPT_TOOLS_PLUGINS:-$PWD/.tools/helm-plugins}/unittest
mkdir -p "$PLUGIN_DIR"
ln -sf "$BIN/helm-unittest" "$PLUGIN_DIR/untt"
cat >"$PLUGIN_DIR/plugin.yaml" <<YAML
name: "unittest"
version: "${HELM_UNITTEST_VERSION#v}"
usage: "unittest for helm charts"
description: "Unit test for helm chart in YAML with ease to keep your chart functional and robust."
ignoreFlags: false
command: "\$HELM_PLUGIN_DIR/untt"
YAML

# Prometheus server and promtool from Debian (bookworm: 2.42), installed system-wide with apt-get
# when either is missing. That needs root; as another user, run once:
#   sudo apt-get update && sudo apt-get install -y --no-install-recommends prometheus
# (or set MTOPT_SKIP_PROMETHEUS=1 to install the other tools only; the Prometheus tests then fail
# with this hint). On a machine with systemd the package also enables a system Prometheus on
# :9090; the tests start their own on a free port, so `systemctl disable --now prometheus` is safe.
if [ "${MTOPT_SKIP_PROMETHEUS:-0}" != 1 ] && ! { command -v prometheus && command -v promtool; } >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    APT=(env DEBIAN_FRONTEND=noninteractive apt-get)
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    APT=(sudo -n env DEBIAN_FRONTEND=noninteractive apt-get)
  else
    echo "install_tools.sh: prometheus/promtool are missing and installing the Debian package needs root:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends prometheus" >&2
    echo "  (or MTOPT_SKIP_PROMETHEUS=1 bash scripts/install_tools.sh to skip it)" >&2
    exit 1
  fi
  echo "install_tools.sh: installing the Debian package prometheus with apt-get" >&2
  # a fresh machine (or image) has no package lists yet
  if ! apt-cache show prometheus >/dev/null 2>&1; then
    "${APT[@]}" update
  fi
  "${APT[@]}" install -y --no-install-recommends prometheus
fi
