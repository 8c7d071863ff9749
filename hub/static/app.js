// fleetbus dashboard: plain ES module, no build step. State comes from the hub's JSON API
// (/api/...) once, then from its Server-Sent Events feed (/api/stream) as things change.

const $ = (sel) => document.querySelector(sel);
const rows = new Map();          // edge id -> EdgeRow
let regions = [];                // RegionRow[]
let events = [];                 // Event[], newest first
const MAX_EVENTS = 500;
const NAMED_UP_TO = 150;         // above this many shown edges, tiles are plain squares

const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

async function getJSON(path) {
  const res = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || `${res.status} ${path}`);
  return body;
}

// ---- live feed ---------------------------------------------------------------------------

function connect() {
  const source = new EventSource("/api/stream");
  source.addEventListener("hello", async () => {
    // (Re)connected: take the whole state, then apply the deltas that follow.
    feedUp = true; renderLive();
    const [list, regs, evs] = await Promise.all([getJSON("/api/edges"), getJSON("/api/regions"), getJSON("/api/events?limit=500")]);
    rows.clear();
    for (const row of list.edges) rows.set(row.edge, row);
    regions = regs; events = evs;
    schedule(true);
  });
  source.addEventListener("edges", (e) => {
    for (const row of JSON.parse(e.data)) rows.set(row.edge, row);
    schedule(false);
    if (page() === "rollouts") refreshRollouts();
  });
  source.addEventListener("regions", (e) => { regions = JSON.parse(e.data); schedule(false); });
  source.addEventListener("events", (e) => {
    events = JSON.parse(e.data).reverse().concat(events).slice(0, MAX_EVENTS);
    schedule(false);
  });
  source.addEventListener("profiles", () => {
    if (page() === "profiles") renderProfiles();
    if (page() === "rollouts") renderRollouts();
  });
  source.onerror = () => { feedUp = false; renderLive(); };
}

let pending = null;
let rebuild = false;
function schedule(full) {
  rebuild = rebuild || full;
  if (pending) return;
  pending = requestAnimationFrame(() => { pending = null; const r = rebuild; rebuild = false; render(r); });
}

// ---- pages -------------------------------------------------------------------------------

function page() {
  const hash = location.hash || "#/";
  if (hash.startsWith("#/edge/")) return "edge";
  if (hash.startsWith("#/profiles")) return "profiles";
  if (hash.startsWith("#/rollouts")) return "rollouts";
  if (hash.startsWith("#/events")) return "events";
  if (hash.startsWith("#/audit")) return "audit";
  return "fleet";
}

function route() {
  const p = page();
  for (const el of document.querySelectorAll(".page")) el.hidden = el.id !== `page-${p}`;
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.dataset.page === p);
  if (p === "edge") renderEdge(decodeURIComponent(location.hash.slice("#/edge/".length)));
  if (p === "profiles") renderProfiles();
  if (p === "rollouts") renderRollouts();
  if (p === "audit") renderAudit();
  render(true);
}

function render(full) {
  renderSummary();
  const p = page();
  if (p === "fleet") renderFleet(full);
  if (p === "events") renderEvents();
  if (p === "edge" && full === false) refreshEdgeHeader();
}

// Every state that has an edge, in a fixed order, so the counts add up (as `fleetbus status`).
const PRESENCE_ORDER = ["online", "stale", "offline", "unreachable", "unknown"];
const COMPLIANCE_ORDER = ["converged", "pending", "failed", "unknown"];
function renderSummary() {
  const count = (key) => { const c = {}; for (const r of rows.values()) c[r[key]] = (c[r[key]] || 0) + 1; return c; };
  const list = (c, order) => order.filter((k) => c[k]).map((k) => `${c[k]} ${k}`).join(", ") || "none";
  $("#summary").textContent = rows.size
    ? `${rows.size} edges: ${list(count("presence"), PRESENCE_ORDER)} · ${list(count("compliance"), COMPLIANCE_ORDER)}`
    : "0 edges";
}

// The hub's own bus: while the hub daemon has lost its nats-server, nothing it shows is live,
// even though this page's feed from the daemon is still connected.
let feedUp = false;
let hub = { connected: true, stale_seconds: 0 };
function renderLive() {
  const live = $("#live");
  if (!hub.connected) {
    live.dataset.state = "stale";
    live.textContent = `stale ${Math.round(hub.stale_seconds)}s: hub lost its nats-server`;
    live.title = hub.message || "";
  } else {
    live.dataset.state = feedUp ? "live" : "reconnecting";
    live.textContent = feedUp ? "live" : "reconnecting";
    live.title = "live updates";
  }
}
async function watchHub() {
  try { hub = await getJSON("/api/hub"); } catch (err) { hub = { connected: false, stale_seconds: 0, message: String(err) }; }
  renderLive();
  setTimeout(watchHub, 2000);  // a sampling period
}

// Fleet page: regions, each a grid of tiles coloured by presence, marked by compliance.

const tiles = new Map();  // edge id -> tile element (of the current build)

function filters() {
  return { q: $("#q").value.trim().toLowerCase(), presence: $("#f-presence").value, compliance: $("#f-compliance").value, region: $("#f-region").value };
}

function shown(row, f) {
  if (f.region && row.region !== f.region) return false;
  if (f.presence && row.presence !== f.presence) return false;
  if (f.compliance && row.compliance !== f.compliance) return false;
  if (f.q) {
    const text = [row.edge, row.region, ...Object.entries(row.labels).map(([k, v]) => `${k}=${v}`)].join(" ").toLowerCase();
    return f.q.split(/\s+/).every((w) => text.includes(w));
  }
  return true;
}

function tileClass(row) {
  return `tile p-${row.presence}` + (row.compliance !== "converged" ? ` c-${row.compliance}` : "") + (row.backlog_pending > 0 ? " backlog" : "");
}

function tileTitle(row) {
  const revs = Object.entries(row.profile_revisions).map(([k, v]) => `${k}@${v}`).join(", ") || "none";
  return `${row.edge} (${row.region})\npresence: ${row.presence}${row.presence_reason ? ` (${row.presence_reason})` : ""}\n` +
    `last seen: ${ago(row.last_seen)}\ncompliance: ${row.compliance}${row.error ? `: ${row.error}` : ""}\n` +
    `profiles: ${revs}\nuplink backlog: ${row.backlog_pending}${row.backlog_lost ? ` (${row.backlog_lost} lost)` : ""}`;
}

function paintTile(el, row) {
  el.className = tileClass(row);
  el.dataset.presence = row.presence;
  el.dataset.compliance = row.compliance;
  el.title = tileTitle(row);
}

function renderFleet(full) {
  const f = filters();
  const select = $("#f-region");
  const names = [...new Set([...regions.map((r) => r.region), ...[...rows.values()].map((r) => r.region)])].sort();
  if (select.options.length - 1 !== names.length) {
    select.innerHTML = `<option value="">every region</option>` + names.map((n) => `<option>${esc(n)}</option>`).join("");
    select.value = f.region;
  }
  const visible = [...rows.values()].filter((r) => shown(r, f)).sort((a, b) => (a.region + "\0" + a.edge).localeCompare(b.region + "\0" + b.edge));
  $("#shown").textContent = `${visible.length} of ${rows.size} shown`;
  const unchanged = !full && visible.length === tiles.size && visible.every((r) => tiles.has(r.edge));
  if (unchanged) {
    for (const r of visible) paintTile(tiles.get(r.edge), r);
    renderRegionHeads(visible);
    return;
  }
  const byRegion = new Map(names.map((n) => [n, []]));
  for (const r of visible) byRegion.get(r.region).push(r);
  const open = new Set([...document.querySelectorAll("details.region:not([open])")].map((d) => d.dataset.region));
  const container = $("#regions");
  container.textContent = "";
  tiles.clear();
  const named = visible.length <= NAMED_UP_TO;
  for (const [name, list] of byRegion) {
    if (!list.length && (f.q || f.presence || f.compliance || f.region)) continue;
    const details = document.createElement("details");
    details.className = "region"; details.dataset.region = name; details.open = !open.has(name);
    details.innerHTML = `<summary><span class="name">${esc(name)}</span><span class="badge rstate"></span><span class="counts"></span></summary>`;
    const grid = document.createElement("div");
    grid.className = "tiles" + (named ? " named" : "");
    for (const r of list) {
      const a = document.createElement("a");
      a.href = `#/edge/${encodeURIComponent(r.edge)}`;
      a.dataset.edge = r.edge;
      if (named) a.textContent = r.edge;
      paintTile(a, r);
      tiles.set(r.edge, a);
      grid.append(a);
    }
    if (!list.length) grid.innerHTML = `<span class="muted">no edges heard yet</span>`;
    details.append(grid);
    container.append(details);
  }
  renderRegionHeads(visible);
}

function renderRegionHeads(visible) {
  for (const details of document.querySelectorAll("details.region")) {
    const name = details.dataset.region;
    const reg = regions.find((r) => r.region === name);
    const state = reg ? reg.state : "unknown";
    const badge = details.querySelector(".rstate");
    badge.className = `badge rstate ${state}`; badge.textContent = `region ${state}`;
    const mine = visible.filter((r) => r.region === name);
    const c = {};
    for (const r of mine) { c[r.presence] = (c[r.presence] || 0) + 1; if (r.compliance !== "converged") c[r.compliance] = (c[r.compliance] || 0) + 1; }
    details.querySelector(".counts").innerHTML = `<span>${mine.length} edges</span>` +
      Object.entries(c).map(([k, v]) => `<span>${v} ${esc(k)}</span>`).join("");
  }
}

// Edge page.

let edgeShown = null;

// What the hub can say of an edge's uplink now: the edge's own word (its last inventory) only
// while the edge is shown online; otherwise what it last said, dated by that inventory.
function uplinkText(e, inv) {
  if (!inv || !inv.link) return "uplink unknown: no inventory yet";
  const said = `${inv.link.upstream_connected ? "connected" : "down"} since ${ago(inv.link.since)}`;
  if (e.uplink !== "unknown") return esc(`uplink ${said}`);
  return esc(`uplink unknown now (edge ${e.presence}); its last inventory, ${ago(inv.observed_at)}, said: ${said}`);
}

async function renderEdge(id) {
  edgeShown = id;
  const box = $("#edge");
  box.innerHTML = `<p class="muted">loading ${esc(id)} ...</p>`;
  let d;
  try { d = await getJSON(`/api/edges/${encodeURIComponent(id)}`); } catch (err) { box.innerHTML = `<div class="card">${esc(err.message)}</div>`; return; }
  if (edgeShown !== id) return;
  const e = d.edge, inv = d.inventory;
  const dl = (pairs) => `<dl class="kv">${pairs.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${v}</dd>`).join("")}</dl>`;
  const backlog = inv ? inv.backlog.map((b) => `<tr><td>${esc(b.stream)}</td><td>${b.pending}</td><td>${b.oldest_age_seconds.toFixed(1)}s</td><td>${b.evicted}</td><td>${b.evicted_unforwarded}</td></tr>`).join("") : "";
  box.innerHTML = `
    <div class="card" id="edge-head"></div>
    <div class="cols">
      <div class="card"><h3>Host</h3>${inv ? dl(Object.entries(inv.host).map(([k, v]) => [k, esc(v)])) : '<p class="muted">no inventory yet</p>'}</div>
      <div class="card"><h3>Uplink backlog</h3>
        <table class="grid"><thead><tr><th>stream</th><th>pending</th><th>oldest</th><th>evicted</th><th>lost</th></tr></thead><tbody>${backlog}</tbody></table>
        <p id="edge-uplink">${uplinkText(e, inv)}</p></div>
    </div>
    <div class="card"><h3>Desired state, explained</h3><p class="muted">hash ${esc(d.desired_hash || "unknown")} · ${esc(d.explain_note)}</p>
      <table class="grid"><thead><tr><th>path</th><th>value</th><th>set by</th></tr></thead><tbody>
      ${d.explain.map((x) => `<tr><td><code>${esc(x.path)}</code></td><td><code>${esc(JSON.stringify(x.value))}</code></td><td>${esc(x.source)}</td></tr>`).join("")}
      </tbody></table></div>
    <div class="card"><h3>Recent events</h3>${eventTable(d.events)}</div>
    ${inv && Object.keys(inv.facts).length ? `<div class="card"><h3>Site facts</h3><pre>${esc(JSON.stringify(inv.facts, null, 2))}</pre></div>` : ""}`;
  refreshEdgeHeader();
}

function refreshEdgeHeader() {
  const head = $("#edge-head");
  const e = rows.get(edgeShown);
  if (!head || !e) return;
  const revs = Object.entries(e.profile_revisions).map(([k, v]) => `${esc(k)}@${v}`).join(", ") || "none";
  head.innerHTML = `<h2>${esc(e.edge)} <span class="badge ${e.presence}" data-presence="${e.presence}">${e.presence}</span>
    <span class="badge ${e.compliance}">${e.compliance}</span></h2>
    <dl class="kv"><dt>region</dt><dd>${esc(e.region)}</dd><dt>last seen</dt><dd>${esc(ago(e.last_seen))}</dd>
    <dt>presence</dt><dd>${esc(e.presence_reason || e.presence)} (since ${esc(ago(e.presence_since))})</dd>
    <dt>profiles applied</dt><dd>${revs}</dd><dt>desired / reported</dt><dd><code>${esc(e.desired_hash)}</code> / <code>${esc(e.reported_hash)}</code> ${esc(e.reported_status || "")}</dd>
    ${e.error ? `<dt>error</dt><dd>${esc(e.error)}</dd>` : ""}
    <dt>labels</dt><dd>${Object.entries(e.labels).map(([k, v]) => `<code>${esc(k)}=${esc(v)}</code>`).join(" ")}</dd>
    <dt>uplink backlog</dt><dd>${e.backlog_pending} pending${e.backlog_lost ? `, ${e.backlog_lost} lost` : ""}</dd></dl>`;
}

function eventTable(list) {
  if (!list.length) return `<p class="muted">none</p>`;
  return `<table class="grid"><thead><tr><th>observed</th><th>kind</th><th>severity</th><th>message</th></tr></thead><tbody>` +
    list.map((ev) => `<tr class="sev-${esc(ev.severity)}"><td title="${esc(ev.observed_at)}">${esc(ago(ev.observed_at))}</td><td>${esc(ev.kind)}</td><td>${esc(ev.severity)}</td><td>${esc(eventText(ev))}</td></tr>`).join("") +
    `</tbody></table>`;
}

function eventText(ev) {
  const r = ev.apply_result;
  if (r) return `${r.status} ${r.desired_hash.slice(0, 12)} (${Object.entries(r.profile_revisions).map(([k, v]) => `${k}@${v}`).join(", ")})${r.error ? ": " + r.error : ""}`;
  return ev.message;
}

// Profiles page.

async function renderProfiles() {
  const box = $("#profiles");
  let list;
  try { list = await getJSON("/api/profiles"); } catch (err) { box.textContent = err.message; return; }
  if (!list.length) { box.innerHTML = `<div class="card muted">no profiles yet: <code>fleetbus profile apply FILE</code></div>`; return; }
  box.innerHTML = list.map((p) => {
    const total = Object.values(p.running).reduce((n, edges) => n + edges.length, 0) || 1;
    const colour = (rev) => (rev === String(p.revision) ? "var(--online)" : rev === "none" ? "var(--unknown)" : "var(--pending)");
    const bar = Object.entries(p.running).map(([rev, edges]) => `<span style="width:${(100 * edges.length) / total}%;background:${colour(rev)}" title="revision ${esc(rev)}: ${edges.length}"></span>`).join("");
    const running = Object.entries(p.running).map(([rev, edges]) =>
      `<details><summary>${rev === "none" ? "not applied" : `revision ${esc(rev)}`}: ${edges.length} edge(s)</summary><p>${edges.map((e) => `<a href="#/edge/${encodeURIComponent(e)}">${esc(e)}</a>`).join(" ")}</p></details>`).join("");
    const history = p.history.map((h) => `<tr><td>${h.revision}</td><td>${esc(h.updated_by)}</td><td title="${esc(h.updated_at)}">${esc(ago(h.updated_at))}</td></tr>`).join("");
    return `<div class="card profile" data-profile="${esc(p.name)}"><h2>${esc(p.name)} <span class="muted">revision ${p.revision} · priority ${p.priority}</span></h2>
      <p>${esc(p.description)}</p><p class="muted">selector <code>${esc(JSON.stringify(p.selector))}</code> · updated by ${esc(p.updated_by)} ${esc(ago(p.updated_at))}</p>
      <div class="bar">${bar}</div>${running}
      <details><summary>history (${p.history.length} kept)</summary><table class="grid"><thead><tr><th>revision</th><th>by</th><th>when</th></tr></thead><tbody>${history}</tbody></table></details></div>`;
  }).join("");
}

// Rollouts page: the newest rollout of each profile (#/rollouts), or every rollout of one
// profile (#/rollouts/<name>): waves with their counts, failing edges, the newest steps.

let rolloutsDue = null;
function refreshRollouts() {  // edges converging change the counts: at most every 2 s
  if (rolloutsDue) return;
  rolloutsDue = setTimeout(() => { rolloutsDue = null; if (page() === "rollouts") renderRollouts(); }, 2000);
}

async function renderRollouts() {
  const box = $("#rollouts");
  const name = decodeURIComponent(location.hash.slice("#/rollouts/".length));
  const query = location.hash.startsWith("#/rollouts/") && name ? `?profile=${encodeURIComponent(name)}` : "";
  let list;
  try { list = await getJSON(`/api/rollouts${query}`); } catch (err) { box.textContent = err.message; return; }
  if (!list.length) { box.innerHTML = `<div class="card muted">no rollouts: a profile with <code>rollout</code> rolls out in waves (docs/rollouts.md)</div>`; return; }
  box.innerHTML = list.map((r) => {
    const waves = r.waves.map((w) => {
      const failed = Object.entries(w.failed).map(([e, why]) => `<li><a href="#/edge/${encodeURIComponent(e)}">${esc(e)}</a>: ${esc(why)}</li>`).join("");
      const left = w.soak_left !== null ? ` · soak ${Math.ceil(w.soak_left)} s left` : "";
      return `<tr class="wave-${esc(w.phase.replace(" ", "-"))}" data-wave="${esc(w.name)}"><td>${esc(w.name)}</td><td>${esc(w.phase)}${left}</td>` +
        `<td>${w.converged}/${w.members}</td><td>${Object.keys(w.failed).length}</td><td>${w.pending}</td><td>${w.offline}</td><td>${w.skipped}</td>` +
        `<td>${failed ? `<ul>${failed}</ul>` : ""}</td></tr>`;
    }).join("");
    const steps = r.steps.slice(0, 20).map((s) => `<tr><td title="${esc(s.at)}">${esc(ago(s.at))}</td><td>${esc(s.kind)}</td><td>${esc(s.message)}</td></tr>`).join("");
    const kept = r.previous ? ` · edges waiting keep revision ${r.previous}` : "";
    const back = r.rollback ? ` · rolled back by revision ${r.rollback}` : "";
    return `<div class="card rollout" data-rollout="${esc(r.key)}" data-status="${esc(r.status)}"><h2><a href="#/rollouts/${encodeURIComponent(r.profile)}">${esc(r.key)}</a> <span class="muted">${esc(r.status)}</span></h2>
      <p>${esc(r.reason)}</p><p class="muted">started by ${esc(r.started_by)}${kept}${back} · updated ${esc(ago(r.updated_at))}</p>
      <table class="grid"><thead><tr><th>wave</th><th>phase</th><th>converged</th><th>failed</th><th>pending</th><th>offline</th><th>skipped</th><th>failing edges</th></tr></thead><tbody>${waves}</tbody></table>
      <details><summary>steps (newest first)</summary><table class="grid"><tbody>${steps}</tbody></table></details></div>`;
  }).join("");
}

// Events page.

function renderEvents() {
  const q = $("#ev-q").value.trim().toLowerCase();
  const list = events.filter((ev) => !q || [ev.kind, ev.edge, ev.region, ev.severity, eventText(ev)].join(" ").toLowerCase().includes(q)).slice(0, 200);
  $("#events").innerHTML = list.map((ev) => `<tr class="sev-${esc(ev.severity)}"><td title="${esc(ev.observed_at)}">${esc(ago(ev.observed_at))}</td>` +
    `<td><a href="#/edge/${encodeURIComponent(ev.edge)}">${esc(ev.edge)}</a></td><td>${esc(ev.kind)}</td><td>${esc(ev.severity)}</td><td>${esc(eventText(ev))}</td></tr>`).join("");
}

// Audit page: the hub's audit trail, read when the page is shown or a filter changes.

async function renderAudit() {
  const params = new URLSearchParams({ hours: $("#au-hours").value, limit: "500" });
  const actor = $("#au-actor").value.trim();
  if (actor) params.set("actor", actor);
  let list;
  try { list = await getJSON(`/api/audit?${params}`); } catch (err) { $("#audit-shown").textContent = err.message; return; }
  $("#audit-shown").textContent = `${list.length} request(s)`;
  $("#audit").innerHTML = list.map((r) => `<tr class="outcome-${esc(r.outcome)}" data-op="${esc(r.op)}"><td title="${esc(r.at)}">${esc(ago(r.at))}</td>` +
    `<td>${esc(r.actor)}</td><td>${esc(r.role)}</td><td>${esc(r.op)}</td><td>${esc(r.target)}</td><td>${r.revision ?? ""}</td>` +
    `<td>${esc(r.outcome)}</td><td>${esc(r.reason)}</td><td>${esc((r.detail || "").split("\n")[0])}</td></tr>`).join("");
}

// ---- start -------------------------------------------------------------------------------

for (const id of ["#q", "#f-presence", "#f-compliance", "#f-region"]) {
  for (const type of ["input", "change"]) $(id).addEventListener(type, () => renderFleet(true));
}
$("#filters").addEventListener("submit", (e) => e.preventDefault());
$("#ev-q").addEventListener("input", renderEvents);
$("#au-hours").addEventListener("change", renderAudit);
$("#au-actor").addEventListener("change", renderAudit);
$("#audit-filters").addEventListener("submit", (e) => { e.preventDefault(); renderAudit(); });
window.addEventListener("hashchange", route);
route();
connect();
watchHub();
