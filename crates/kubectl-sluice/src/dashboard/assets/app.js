// The Sluice dashboard: the board of objects the server keeps from its watches, drawn as it
// changes. The server sends the whole board on connect (`snapshot`), then each change (`upsert`,
// `delete`) and watch failures (`problem`); EventSource reconnects by itself and the next snapshot
// replaces everything. No framework and no build step: what is drawn is built as DOM nodes, so
// text from the cluster is never parsed as HTML.
'use strict';

const config = JSON.parse(document.getElementById('config').textContent);
const objects = new Map(); // "Kind/namespace/name" -> view
const problems = new Map(); // kind -> message
let renderQueued = false;

const keyOf = (kind, namespace, name) => `${kind}/${namespace}/${name}`;
const ofKind = (kind) => [...objects.entries()].filter(([key]) => key.startsWith(kind + '/')).map(([, view]) => view);
const selected = () => decodeURIComponent(location.hash.slice(1)) || null; // "namespace/name"

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttributes(el, attrs);
  append(el, children);
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  setAttributes(el, attrs);
  append(el, children);
  return el;
}

function setAttributes(el, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    // Styles through the CSSOM: the page's Content-Security-Policy refuses style attributes.
    else if (name === 'style') Object.assign(el.style, value);
    else el.setAttribute(name, value === true ? '' : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

const badge = (text) => h('span', { class: `badge ${text}` }, text);
const time = (at) => (at ? new Date(at).toLocaleTimeString([], { hour12: false }) : '');

function ago(at) {
  if (!at) return '';
  const seconds = Math.max(0, Math.round((Date.now() - new Date(at).getTime()) / 1000));
  if (seconds < 90) return `${seconds}s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)}m ago`;
  if (seconds < 129600) return `${Math.round(seconds / 3600)}h ago`;
  return `${Math.round(seconds / 86400)}d ago`;
}

function duration(from, to) {
  if (!from || !to) return '';
  const seconds = Math.round((new Date(to) - new Date(from)) / 1000);
  return seconds < 120 ? `${seconds}s` : `${Math.round(seconds / 60)}m`;
}

function setConnection(state, text) {
  const el = document.getElementById('connection');
  el.dataset.state = state;
  el.textContent = text;
}

function schedule() {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => {
    renderQueued = false;
    render();
  }, 0);
}

function connect() {
  const source = new EventSource('/api/events');
  source.addEventListener('snapshot', (event) => {
    const board = JSON.parse(event.data);
    objects.clear();
    problems.clear();
    for (const entry of board.objects) objects.set(keyOf(entry.kind, entry.namespace, entry.name), entry.view);
    for (const [kind, message] of Object.entries(board.problems || {})) problems.set(kind, message);
    setConnection('live', 'live');
    schedule();
  });
  source.addEventListener('upsert', (event) => {
    const entry = JSON.parse(event.data);
    objects.set(keyOf(entry.kind, entry.namespace, entry.name), entry.view);
    schedule();
  });
  source.addEventListener('delete', (event) => {
    const entry = JSON.parse(event.data);
    objects.delete(keyOf(entry.kind, entry.namespace, entry.name));
    schedule();
  });
  source.addEventListener('problem', (event) => {
    const problem = JSON.parse(event.data);
    if (problem.message) problems.set(problem.kind, problem.message);
    else problems.delete(problem.kind);
    schedule();
  });
  source.onerror = () => setConnection('lost', 'reconnecting');
}

// --- Rollouts -------------------------------------------------------------------------------

function strategyOf(rollout) {
  const strategy = rollout.spec.strategy || {};
  return strategy.blueGreen ? 'blue-green' : 'canary';
}

function phaseOf(rollout) {
  const status = rollout.status || {};
  if (status.abort) return 'Aborted';
  return status.phase || 'Pending';
}

function replicaSetsOf(rollout) {
  const { name, namespace } = rollout.metadata;
  const status = rollout.status || {};
  const preview = strategyOf(rollout) === 'blue-green' ? 'preview' : 'canary';
  return ofKind('ReplicaSet')
    .filter((rs) => rs.metadata.namespace === namespace && (rs.metadata.labels || {})['sluice.dev/rollout'] === name)
    .map((rs) => {
      const hash = rs.revision;
      let role = 'old';
      if (hash && hash === status.stableRS) role = 'stable';
      else if (hash && hash === status.currentPodHash) role = preview;
      return {
        name: rs.metadata.name,
        hash,
        role,
        desired: rs.spec.replicas || 0,
        ready: rs.status.readyReplicas || 0,
        available: rs.status.availableReplicas || 0,
        created: rs.metadata.creationTimestamp,
      };
    })
    .filter((rs) => rs.role !== 'old' || rs.desired > 0 || rs.ready > 0)
    .sort((a, b) => (a.created < b.created ? 1 : -1));
}

function trafficOf(rollout) {
  const status = rollout.status || {};
  const weights = (status.canary || {}).weights;
  if (strategyOf(rollout) === 'blue-green') return null;
  const canary = weights ? weights.canary.weight : 0;
  return { canary, stable: 100 - canary };
}

function trafficCell(rollout) {
  const traffic = trafficOf(rollout);
  if (!traffic) {
    const active = ((rollout.status || {}).blueGreen || {}).activeSelector;
    return h('span', { class: 'traffic-label' }, active ? `active ${active}` : '');
  }
  return h('div', {},
    h('div', { class: 'traffic', title: `canary ${traffic.canary}%, stable ${traffic.stable}%` },
      h('div', { class: 'canary', style: { width: `${traffic.canary}%` } }),
      h('div', { class: 'stable', style: { width: `${traffic.stable}%` } })),
    h('span', { class: 'traffic-label' }, `canary ${traffic.canary}% · stable ${traffic.stable}%`));
}

function podsText(rollout) {
  return replicaSetsOf(rollout)
    .map((rs) => `${rs.role} ${rs.ready}/${rs.desired}`)
    .join(' · ');
}

function rolloutRow(rollout) {
  const { name, namespace } = rollout.metadata;
  const status = rollout.status || {};
  const phase = phaseOf(rollout);
  const traffic = trafficOf(rollout);
  const id = `${namespace}/${name}`;
  const classes = [];
  if (status.abort) classes.push('aborted');
  if (status.phase === 'Degraded') classes.push('degraded');
  if (selected() === id) classes.push('selected');
  return h('tr', {
    class: classes.join(' '),
    'data-rollout': id,
    'data-phase': phase,
    'data-step-index': status.currentStepIndex ?? '',
    'data-weight': traffic ? traffic.canary : '',
    onclick: () => { location.hash = encodeURIComponent(id); },
  },
  h('td', {}, h('div', { class: 'name' }, name), h('div', { class: 'ns' }, namespace)),
  h('td', {}, strategyOf(rollout)),
  h('td', {}, badge(phase)),
  h('td', {}, status.stepProgress || '—'),
  h('td', {}, trafficCell(rollout)),
  h('td', {}, podsText(rollout)),
  h('td', { class: 'message' }, status.message || ''));
}

function renderRollouts() {
  const rollouts = ofKind('Rollout').sort((a, b) =>
    `${a.metadata.namespace}/${a.metadata.name}`.localeCompare(`${b.metadata.namespace}/${b.metadata.name}`));
  document.querySelector('#rollouts tbody').replaceChildren(...rollouts.map(rolloutRow));
  document.getElementById('no-rollouts').hidden = rollouts.length > 0;
}

// --- One Rollout ------------------------------------------------------------------------------

function stepText(step) {
  const [kind, value] = Object.entries(step)[0] || ['?', null];
  switch (kind) {
    case 'setWeight': return `weight ${value}%`;
    case 'pause': return value && value.duration !== undefined ? `pause ${value.duration}` : 'pause until promoted';
    case 'analysis': return `analysis ${(value.templates || []).map((t) => t.templateName).join(', ')}`;
    case 'setCanaryScale': return `canary scale ${value.weight !== undefined ? value.weight + '%' : value.replicas ?? 'matches traffic'}`;
    case 'confidence': return 'confidence score';
    case 'setHeaderRoute': return 'header route';
    case 'setMirrorRoute': return 'mirror route';
    default: return kind;
  }
}

async function act(rollout, action) {
  const { namespace, name } = rollout.metadata;
  try {
    const response = await fetch(`/api/rollouts/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}/${action}`, {
      method: 'POST',
      headers: { 'X-Sluice-Token': config.token },
    });
    toast(await response.text(), !response.ok);
  } catch (err) {
    toast(`${action}: ${err}`, true);
  }
}

function toast(text, error) {
  const el = document.getElementById('toast');
  el.textContent = text;
  el.className = error ? 'error' : '';
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 5000);
}

function actions(rollout) {
  if (!config.actions) return null;
  const status = rollout.status || {};
  const paused = (status.pauseConditions || []).length > 0 || status.controllerPause;
  const button = (action, label, extra) => h('button', {
    'data-action': action,
    onclick: (event) => { event.stopPropagation(); act(rollout, action); },
    ...extra,
  }, label);
  return h('div', { class: 'actions' },
    button('promote', 'Promote'),
    button('promote-full', 'Promote fully'),
    paused ? button('resume', 'Resume') : button('pause', 'Pause'),
    status.abort ? button('retry', 'Retry') : button('abort', 'Abort', { class: 'danger' }),
    button('restart', 'Restart pods'));
}

function stepsPanel(rollout) {
  const steps = ((rollout.spec.strategy || {}).canary || {}).steps || [];
  if (!steps.length) return null;
  const status = rollout.status || {};
  const current = status.currentStepIndex ?? 0;
  return h('div', {},
    h('h3', {}, 'Steps'),
    h('ol', { class: 'steps' }, steps.map((step, index) => h('li', {
      class: [index < current ? 'done' : '', index === current && status.currentPodHash !== status.stableRS ? 'current' : '', status.abort ? 'aborted' : ''].join(' '),
      'data-step': index,
    }, `${index + 1}. ${stepText(step)}`))));
}

function versionsPanel(rollout) {
  const sets = replicaSetsOf(rollout);
  return h('div', {},
    h('h3', {}, 'Versions'),
    sets.length ? h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, 'Role'), h('th', {}, 'ReplicaSet'), h('th', {}, 'Ready'), h('th', {}, 'Available'))),
      h('tbody', {}, sets.map((rs) => h('tr', {},
        h('td', {}, rs.role), h('td', {}, rs.name), h('td', {}, `${rs.ready}/${rs.desired}`), h('td', {}, rs.available)))))
      : h('p', { class: 'empty' }, 'No ReplicaSets.'));
}

function releasePanel(rollout) {
  const status = rollout.status || {};
  const release = status.release;
  const breaker = status.circuitBreaker;
  const gates = status.errorBudget;
  return h('div', {},
    h('h3', {}, 'Release'),
    release ? h('div', { class: 'figures' },
      h('div', {}, `#${release.number} · revision ${release.revision} · started ${ago(release.startedAt)}`,
        release.outcome ? [' · ', badge(release.outcome)] : null),
      release.plan ? h('div', { class: 'muted' }, `plan ${release.plan.profile}: ${release.plan.reason}`) : null,
      release.reason ? h('div', {}, release.reason) : null,
      (release.images || []).length ? h('div', { class: 'muted' }, release.images.join(', ')) : null)
      : h('p', { class: 'empty' }, 'No release yet.'),
    breaker ? h('div', { class: 'figures' }, h('h3', {}, 'Circuit breaker'),
      h('div', {}, badge(breaker.state), breaker.halfOpenAt ? ` half-open at ${time(breaker.halfOpenAt)}` : ''),
      (breaker.failures || []).map((failure) => h('div', { class: 'muted' }, failure))) : null,
    gates && (gates.heldBy || []).length ? h('div', { class: 'figures' }, h('h3', {}, 'Held by'),
      gates.heldBy.map((held) => h('div', {}, typeof held === 'string' ? held : JSON.stringify(held)))) : null);
}

function timelinePanel(rollout) {
  const release = (rollout.status || {}).release;
  const entries = (release && release.timeline) || [];
  return h('div', {},
    h('h3', {}, 'Timeline'),
    entries.length ? h('ol', { class: 'timeline' }, entries.slice().reverse().map((entry) => h('li', {},
      h('time', {}, time(entry.at)),
      h('span', {}, entry.reason),
      h('span', {}, entry.message, entry.by ? h('span', { class: 'muted' }, ` (${entry.by})`) : null))))
      : h('p', { class: 'empty' }, 'Nothing yet.'));
}

function runsOf(rollout) {
  const { name, namespace } = rollout.metadata;
  return ofKind('AnalysisRun')
    .filter((run) => run.metadata.namespace === namespace &&
      (((run.metadata.owner || {}).name === name) || (run.metadata.labels || {})['sluice.dev/rollout'] === name))
    .sort((a, b) => (a.metadata.creationTimestamp < b.metadata.creationTimestamp ? 1 : -1))
    .slice(0, 4);
}

function measuredValue(measurement) {
  if (measurement.value === undefined || measurement.value === null) return null;
  const match = String(measurement.value).match(/-?\d+(\.\d+)?([eE][-+]?\d+)?/);
  return match ? parseFloat(match[0]) : null;
}

// A line over time with a dot per point (coloured by its phase) and dashed threshold lines.
function chart(points, thresholds, attrs) {
  const width = 440, height = 150, left = 46, right = 10, top = 10, bottom = 22;
  const values = points.map((p) => p.v).concat(thresholds.map((t) => t.value));
  let min = Math.min(...values), max = Math.max(...values);
  if (!isFinite(min)) { min = 0; max = 1; }
  if (min === max) { min -= Math.abs(min) * 0.1 || 1; max += Math.abs(max) * 0.1 || 1; }
  const pad = (max - min) * 0.1;
  min -= pad; max += pad;
  const times = points.map((p) => p.t);
  let t0 = Math.min(...times), t1 = Math.max(...times);
  if (!isFinite(t0)) { t0 = Date.now() - 60000; t1 = Date.now(); }
  if (t0 === t1) { t0 -= 30000; t1 += 30000; }
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
  const y = (v) => top + (1 - (v - min) / (max - min)) * (height - top - bottom);
  const label = (v) => (Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(1) : +v.toFixed(3));
  return s('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, width, height, ...attrs },
    s('line', { class: 'axis', x1: left, y1: top, x2: left, y2: height - bottom }),
    s('line', { class: 'axis', x1: left, y1: height - bottom, x2: width - right, y2: height - bottom }),
    s('text', { x: left - 4, y: top + 8, 'text-anchor': 'end' }, label(max)),
    s('text', { x: left - 4, y: height - bottom, 'text-anchor': 'end' }, label(min)),
    s('text', { x: left, y: height - 6 }, time(t0)),
    s('text', { x: width - right, y: height - 6, 'text-anchor': 'end' }, time(t1)),
    thresholds.map((t) => s('line', { class: `threshold ${t.verdict}`, x1: left, x2: width - right, y1: y(t.value), y2: y(t.value) })),
    // One label per value: a success and a failure condition often meet at the same number.
    [...new Set(thresholds.map((t) => t.value))].map((value) => s('text', { x: width - right - 2, y: y(value) - 3, 'text-anchor': 'end' },
      thresholds.filter((t) => t.value === value).map((t) => `${t.verdict} ${t.op} ${value}`).join(' · '))),
    points.length > 1 ? s('polyline', { class: attrs.lineClass || 'line', points: points.map((p) => `${x(p.t)},${y(p.v)}`).join(' ') }) : null,
    points.map((p) => s('circle', { class: `point ${p.phase || attrs.lineClass || 'line'}`, cx: x(p.t), cy: y(p.v), r: 3.5 },
      s('title', {}, `${time(p.t)}: ${p.label ?? p.v}${p.phase ? ' ' + p.phase : ''}`))));
}

function runPanel(run) {
  const status = run.status || {};
  const metrics = new Map((run.spec.metrics || []).map((metric) => [metric.name, metric]));
  return h('div', { class: 'run', 'data-run': run.metadata.name },
    h('div', { class: 'metric-head' }, h('strong', {}, run.metadata.name), badge(status.phase || 'Pending'),
      h('span', { class: 'muted' }, status.message || '')),
    (status.metricResults || []).map((result) => {
      const spec = metrics.get(result.name) || {};
      const points = (result.measurements || [])
        .map((m) => ({ t: new Date(m.finishedAt || m.startedAt).getTime(), v: measuredValue(m), phase: m.phase, label: m.value }))
        .filter((p) => p.v !== null && isFinite(p.t));
      return h('div', { class: 'metric' },
        h('div', { class: 'metric-head' }, h('span', {}, result.name), badge(result.phase),
          h('span', { class: 'muted' }, `${result.count || 0} measured, ${result.failed || 0} failed`)),
        chart(points, spec.thresholds || [], { class: 'chart metric-chart', 'data-metric': result.name }));
    }));
}

function historyPanel(rollout) {
  const { name, namespace } = rollout.metadata;
  const releases = ofKind('Release')
    .filter((r) => r.metadata.namespace === namespace && r.spec && r.spec.rollout === name)
    .sort((a, b) => b.spec.number - a.spec.number);
  if (!releases.length) return null;
  return h('div', {},
    h('h3', {}, 'History'),
    h('table', { class: 'history' },
      h('thead', {}, h('tr', {}, ['#', 'Revision', 'Outcome', 'Started', 'Took', 'Why'].map((t) => h('th', {}, t)))),
      h('tbody', {}, releases.map((record) => {
        const release = record.spec;
        return h('tr', {},
          h('td', {}, release.number),
          h('td', {}, release.revision),
          h('td', {}, badge(release.outcome || 'Running'), release.abortedBy ? h('span', { class: 'muted' }, ` ${release.abortedBy}`) : null),
          h('td', {}, ago(release.startedAt)),
          h('td', {}, duration(release.startedAt, release.endedAt)),
          h('td', { class: 'message' }, release.reason || ''));
      }))));
}

function renderDetail() {
  const section = document.getElementById('detail');
  const id = selected();
  const [namespace, name] = id ? id.split('/') : [];
  const rollout = id && objects.get(keyOf('Rollout', namespace, name));
  if (!rollout) {
    section.hidden = true;
    section.replaceChildren();
    return;
  }
  const status = rollout.status || {};
  const runs = runsOf(rollout);
  section.hidden = false;
  section.replaceChildren(
    h('div', { class: 'detail-head' }, h('h2', {}, `${namespace}/${name}`), badge(phaseOf(rollout)),
      h('span', { class: 'muted' }, status.message || ''), actions(rollout)),
    stepsPanel(rollout),
    h('div', { class: 'grid' }, versionsPanel(rollout), releasePanel(rollout)),
    h('div', { class: 'grid' }, timelinePanel(rollout),
      h('div', {}, h('h3', {}, 'Analysis'), runs.length ? runs.map(runPanel) : h('p', { class: 'empty' }, 'No analysis runs.'))),
    historyPanel(rollout));
}

// --- Gates ------------------------------------------------------------------------------------

function gatePanel(gate) {
  const status = gate.status || {};
  const samples = (gate.samples || [])
    .filter((sample) => typeof sample.budgetRemainingPercent === 'number')
    .map((sample) => ({ t: new Date(sample.at).getTime(), v: sample.budgetRemainingPercent }));
  const number = (v, digits) => (typeof v === 'number' ? v.toFixed(digits) : '—');
  return h('div', { class: 'gate', 'data-gate': `${gate.metadata.namespace}/${gate.metadata.name}` },
    h('div', { class: 'figures' },
      h('div', {}, h('strong', {}, gate.metadata.name), ' ', h('span', { class: 'ns' }, gate.metadata.namespace), ' ', badge(status.state || 'Unknown')),
      h('div', {}, `objective ${gate.spec.objective ?? '—'}% over ${gate.spec.window ?? '—'}`),
      h('div', {}, `budget left ${number(status.budgetRemainingPercent, 1)}% · error ratio ${number(status.errorRatio, 5)}`),
      (status.burnRates || []).map((rate) => h('div', { class: rate.firing ? 'firing' : '' },
        `burn ${rate.longWindow}/${rate.shortWindow}: ${number(rate.longBurnRate, 2)} / ${number(rate.shortBurnRate, 2)} (alert at ${rate.factor}×)`)),
      h('div', { class: 'muted' }, status.message || '')),
    h('div', {}, h('div', { class: 'muted' }, 'Budget left (%), each evaluation since the dashboard started'),
      chart(samples, [{ verdict: 'failure', op: '<', value: 0 }], { class: 'chart burn-down', lineClass: 'budget' })));
}

function renderGates() {
  const gates = ofKind('ErrorBudgetGate');
  document.getElementById('gates-section').hidden = gates.length === 0;
  document.getElementById('gates').replaceChildren(...gates.map(gatePanel));
}

function renderProblems() {
  document.getElementById('problems').replaceChildren(...[...problems.values()].map((message) => h('div', {}, message)));
}

function render() {
  renderProblems();
  renderRollouts();
  renderDetail();
  renderGates();
}

document.getElementById('scope').textContent = config.scope;
document.getElementById('access').textContent = config.actions ? 'actions allowed' : 'read-only';
window.addEventListener('hashchange', schedule);
// Relative times ("12s ago") move on without a change.
setInterval(schedule, 5000);
connect();
