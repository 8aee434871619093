#!/usr/bin/env bash
# Prints a merge patch for Argo CD's argocd-cm that adds Sluice's health checks:
#   kubectl -n argocd patch configmap argocd-cm --type merge --patch-file <(bash config/argocd/argocd-cm-patch.sh)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
printf 'data:\n'
for kind in Rollout AnalysisRun ErrorBudgetGate; do
  printf '  resource.customizations.health.sluice.dev_%s: |\n' "$kind"
  sed 's/^/    /' "$here/$(echo "$kind" | tr '[:upper:]' '[:lower:]').lua"
done
