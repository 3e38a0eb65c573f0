-- Argo CD health check for scaleagent.dev/AgentShard (Lua 5.1, as Argo CD embeds it).
-- The same truth kstatus reads from the status the operator writes:
--   Suspended   spec.paused is true
--   Progressing no status for this generation yet (a new shard shows the CRD's
--               default status, observedGeneration 0, until the operator writes
--               one), or Reconciling (rolling out, syncing, waiting for replicas, a
--               hub not reached yet, a handoff)
--   Degraded    Stalled: only a person can fix it (an invalid config, an account
--               another shard owns, an account the hub refuses)
--   Healthy     Ready: every account streams, as a live agent replica reports it
-- Laid out as Argo CD's resource_customizations/scaleagent.dev/AgentShard/, with its
-- test cases (health_test.yaml, testdata/). Or paste it under
-- resource.customizations.health.scaleagent.dev_AgentShard in the argocd-cm ConfigMap
-- (manifests/gitops/argocd/argocd-cm.yaml has it so).
local hs = { status = "Progressing", message = "Waiting for the operator" }

local function condition(status, kind)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

if obj.spec ~= nil and obj.spec.paused == true then
  hs.status = "Suspended"
  hs.message = "spec.paused is true: the operator leaves this shard's agents as they are"
  return hs
end

local status = obj.status
if status == nil then
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= generation then
  hs.message = "The operator has not looked at this generation yet"
  return hs
end

local stalled = condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = (stalled.reason or "Stalled") .. ": " .. (stalled.message or "")
  return hs
end

local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end

local reconciling = condition(status, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = (reconciling.reason or "Reconciling") .. ": " .. (reconciling.message or "")
elseif ready ~= nil then
  hs.message = (ready.reason or "NotReady") .. ": " .. (ready.message or "")
end
return hs
