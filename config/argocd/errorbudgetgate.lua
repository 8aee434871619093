-- Argo CD health check for sluice.dev/ErrorBudgetGate: Healthy while releases may go (Open, or
-- Warning: burning fast but within budget), Suspended while it holds releases (Frozen, or
-- CriticalOnly), Degraded when it cannot judge (Unknown: Prometheus unreachable, no data), and
-- Progressing until its first evaluation of the latest spec.
local hs = {}
local status = obj.status
if status == nil or status.state == nil or status.observedGeneration == nil
    or obj.metadata.generation == nil or status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the gate's first evaluation"
  return hs
end
local states = {
  Open = "Healthy",
  Warning = "Healthy",
  Frozen = "Suspended",
  CriticalOnly = "Suspended",
  Unknown = "Degraded",
}
hs.status = states[status.state] or "Degraded"
hs.message = status.message or status.state
return hs
