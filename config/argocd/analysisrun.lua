-- Argo CD health check for sluice.dev/AnalysisRun: Progressing while it measures, Healthy when it
-- succeeded, Suspended when inconclusive (a person decides), Degraded when it failed or errored.
local hs = {}
local status = obj.status
local phases = {
  Pending = "Progressing",
  Running = "Progressing",
  Successful = "Healthy",
  Inconclusive = "Suspended",
  Failed = "Degraded",
  Error = "Degraded",
}
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Sluice controller to start the run"
  return hs
end
hs.status = phases[status.phase] or "Progressing"
hs.message = status.message or status.phase
return hs
