-- Argo CD health check for sluice.dev/Rollout: the phase the controller records, once it has seen
-- the latest spec. Healthy; Progressing (a release moving, or the spec not yet seen); Suspended
-- (paused by a person, a pause step, a confirmation, or held by an error-budget gate or the circuit
-- breaker); Degraded (aborted, or a spec the controller refuses). The message is the Rollout's own.
local hs = {}
local status = obj.status
if status == nil or status.observedGeneration == nil or obj.metadata.generation == nil
    or status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the Sluice controller to see the latest spec"
  return hs
end
local phases = {
  Healthy = "Healthy",
  Progressing = "Progressing",
  Paused = "Suspended",
  Degraded = "Degraded",
}
hs.status = phases[status.phase] or "Progressing"
hs.message = status.message or ""
return hs
