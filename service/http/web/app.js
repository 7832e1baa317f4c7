// The pytc-service page: jobs, their live progress, previews and views. Plain JavaScript, no build.
// Every call goes to /v1 like any client's; with tokens set, the session cookie (POST /login) carries
// who we are, so no token is ever put in a URL or in this page's storage.
"use strict";

const $ = (id) => document.getElementById(id);
const streams = new Map(); // job id -> EventSource, for the jobs shown
let current = null; // the job page's state: {id, job, view, lossPoints, zChosen, lastRefresh}
let listed = ""; // the ids the jobs list shows, to redraw it when jobs come or go
const LIST_REFRESH_MS = 3000;
// A browser keeps about 6 connections to one server: the list follows a few jobs' streams and polls
// the rest, so that the page's own calls never wait behind event streams.
const MAX_STREAMS = 3;
const rows = new Map(); // job id -> its row's cells, on the jobs list

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (response.status === 401) {
    showLogin();
    throw new Error("login needed");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(detail);
  }
  return response;
}

function show(section) {
  for (const id of ["login", "jobs", "job"]) $(id).hidden = id !== section;
}

function closeStreams() {
  for (const source of streams.values()) source.close();
  streams.clear();
}

function showLogin() {
  closeStreams();
  show("login");
  $("token").focus();
}

async function login(event) {
  event.preventDefault();
  $("login-error").hidden = true;
  const response = await fetch("/login", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: $("token").value }),
  });
  $("token").value = "";
  if (!response.ok) {
    $("login-error").textContent = "That token is not valid for this service.";
    $("login-error").hidden = false;
    return;
  }
  $("logout").hidden = false;
  route();
}

async function logout() {
  await fetch("/logout", { method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" } });
  $("logout").hidden = true;
  showLogin();
}

function progressText(job) {
  const p = job.progress || {};
  if (!p.total) return job.state;
  let text = `${p.done}/${p.total} ${p.unit} (${Math.round(100 * p.fraction)}%)`;
  if (p.eta_seconds != null && job.state === "running") text += `, ${Math.round(p.eta_seconds)} s left`;
  if (p.loss != null) text += `, loss ${Number(p.loss).toFixed(4)}`;
  return text;
}

function cell(row, content) {
  const td = row.insertCell();
  if (content instanceof Node) td.appendChild(content); else td.textContent = content;
  return td;
}

function bar(fraction) {
  const outer = document.createElement("div");
  outer.className = "progress";
  const inner = document.createElement("div");
  inner.className = "bar";
  inner.style.width = `${Math.round(100 * (fraction || 0))}%`;
  outer.appendChild(inner);
  return outer;
}

function follow(id, onEvent) {
  if (streams.has(id)) return;
  const source = new EventSource(`/v1/jobs/${encodeURIComponent(id)}/events`);
  const handle = (message) => {
    const data = JSON.parse(message.data);
    onEvent(data);
    if (["succeeded", "failed", "cancelled"].includes(data.state)) {
      source.close();
      streams.delete(id);
    }
  };
  source.addEventListener("state", handle);
  source.addEventListener("progress", handle);
  streams.set(id, source);
}

function jobRow(tbody, job) {
  const row = tbody.insertRow();
  row.id = `job-row-${job.id}`;
  const link = document.createElement("a");
  link.href = `#/jobs/${job.id}`;
  link.textContent = job.id;
  cell(row, link);
  cell(row, job.kind);
  const state = cell(row, job.state);
  state.className = `state state-${job.state}`;
  const progress = cell(row, bar(job.progress.fraction));
  const text = document.createElement("div");
  text.className = "notes";
  text.textContent = progressText(job);
  progress.appendChild(text);
  cell(row, job.created_at.slice(0, 19).replace("T", " "));
  cell(row, job.target || "-");
  return { state, progress, text };
}

async function showJobs() {
  closeStreams();
  current = null;
  const page = await (await api("/v1/jobs?limit=100")).json();
  listed = page.jobs.map((job) => job.id).join(",");
  show("jobs");
  const tbody = $("jobs-table").tBodies[0];
  tbody.replaceChildren();
  $("jobs-empty").hidden = page.jobs.length > 0;
  rows.clear();
  for (const job of page.jobs) {
    const cells = jobRow(tbody, job);
    rows.set(job.id, cells);
    if ((job.state === "queued" || job.state === "running") && streams.size < MAX_STREAMS) {
      follow(job.id, (data) => updateRow(cells, { ...job, ...data }));
    }
  }
}

function updateRow(cells, job) {
  cells.state.textContent = job.state;
  cells.state.className = `state state-${job.state}`;
  cells.progress.firstChild.firstChild.style.width = `${Math.round(100 * (job.progress.fraction || 0))}%`;
  cells.text.textContent = progressText(job);
}

function renderJob(job) {
  current.job = job;
  $("job-id").textContent = job.id;
  $("job-kind").textContent = job.kind;
  $("job-state").textContent = job.state;
  $("job-state").className = `state state-${job.state}`;
  $("job-bar").style.width = `${Math.round(100 * (job.progress.fraction || 0))}%`;
  $("job-progress").textContent = progressText(job);
  $("job-error").hidden = !job.error;
  if (job.error) $("job-error").textContent = `${job.error.title}: ${job.error.detail}`;
  $("job-summary").replaceChildren(...(job.summary || []).map((line) => {
    const li = document.createElement("li");
    li.textContent = line;
    return li;
  }));
  $("job-doc").textContent = JSON.stringify(job.spec, null, 2);
  const times = [["created", job.created_at], ["started", job.started_at], ["finished", job.finished_at]];
  const p = job.progress || {};
  if (p.elapsed_seconds) times.push(["elapsed", `${p.elapsed_seconds.toFixed(1)} s`]);
  if (p.rate) times.push(["rate", `${p.rate.toFixed(2)} ${p.unit}/s`]);
  $("job-times").replaceChildren(...times.map(([name, value]) => {
    const tr = document.createElement("tr");
    cell(tr, name);
    cell(tr, value ? String(value).replace("T", " ") : "-");
    return tr;
  }));
  const dash = job.links && job.links.dashboard;
  $("dashboard-link").hidden = !dash;
  if (dash) $("dashboard-link").href = dash;
  if (job.kind === "training") recordLoss(job);
}

function recordLoss(job) {
  $("loss").hidden = false;
  const p = job.progress || {};
  if (p.loss != null && p.done > 0) {
    const last = current.lossPoints[current.lossPoints.length - 1];
    if (!last || last[0] !== p.done) current.lossPoints.push([p.done, Number(p.loss)]);
  }
  const history = Array.isArray(p.loss_history) && p.loss_history.length ? p.loss_history : current.lossPoints;
  drawLoss(history, p.validation || [], p.total || 1);
}

function drawLoss(points, validation, total) {
  const canvas = $("loss-canvas");
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  g.strokeStyle = "#999";
  g.strokeRect(40, 10, canvas.width - 50, canvas.height - 40);
  if (!points.length) return;
  const losses = points.map((pt) => pt[1]);
  const top = Math.max(...losses), bottom = Math.min(0, ...losses);
  const x = (it) => 40 + ((canvas.width - 50) * it) / total;
  const y = (v) => 10 + ((canvas.height - 40) * (top - v)) / (top - bottom || 1);
  g.fillStyle = "#333";
  g.fillText(top.toFixed(3), 2, 14);
  g.fillText(bottom.toFixed(3), 2, canvas.height - 30);
  g.fillText(`iteration ${total}`, canvas.width - 80, canvas.height - 15);
  g.strokeStyle = "#3a7bd5";
  g.beginPath();
  points.forEach(([it, v], i) => (i ? g.lineTo(x(it), y(v)) : g.moveTo(x(it), y(v))));
  g.stroke();
  g.fillStyle = "#207020";
  for (const score of validation) if (score.dice != null) g.fillRect(x(score.iteration) - 2, y(top * (1 - score.dice)) - 2, 4, 4);
}

async function loadView() {
  try {
    current.view = await (await api(current.job.links.view || `/v1/jobs/${current.id}/view`)).json();
  } catch (err) {
    $("view-notes").textContent = `No view: ${err.message}`;
    $("previews").hidden = false;
    return;
  }
  const view = current.view;
  $("view-link").href = view.url;
  $("view-link").hidden = view.layers.length === 0;
  $("view-notes").textContent = view.notes.join("; ");
  if (!view.layers.length) return;
  $("previews").hidden = false;
  const z = $("z");
  z.max = Math.max(0, view.planes - 1);
  if (!current.zChosen) z.value = Math.floor(view.planes / 2);
  $("z-value").textContent = z.value;
  const grid = $("preview-grid");
  grid.replaceChildren();
  for (const layer of view.layers) {
    const channels = layer.name.startsWith("prediction") && layer.channels ? layer.channels : 1;
    for (let c = 0; c < channels; c++) {
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.className = "preview";
      img.dataset.layer = layer.name;
      img.dataset.channel = String(c);
      img.alt = `${layer.name} at z`;
      const caption = document.createElement("figcaption");
      caption.textContent = channels > 1 ? `${layer.name}, channel ${c}` : layer.name;
      figure.append(img, caption);
      grid.appendChild(figure);
    }
  }
  refreshPreviews();
}

function refreshPreviews() {
  if (!current || !current.view) return;
  const z = $("z").value;
  const stamp = Date.now();
  for (const img of document.querySelectorAll("img.preview")) {
    const query = new URLSearchParams({ layer: img.dataset.layer, z, channel: img.dataset.channel, t: stamp });
    img.src = `/v1/jobs/${encodeURIComponent(current.id)}/preview?${query}`;
  }
}

async function showJob(id) {
  closeStreams();
  current = { id, job: null, view: null, lossPoints: [], zChosen: false, lastRefresh: 0 };
  const job = await (await api(`/v1/jobs/${encodeURIComponent(id)}`)).json();
  show("job");
  $("previews").hidden = true;
  $("loss").hidden = true;
  $("view-link").hidden = true;
  renderJob(job);
  await loadView();
  if (job.state === "queued" || job.state === "running") {
    follow(id, (data) => {
      if (!current || current.id !== id) return;
      const merged = { ...current.job, ...data };
      renderJob(merged);
      const now = Date.now();
      const ended = ["succeeded", "failed", "cancelled"].includes(merged.state);
      if (ended || now - current.lastRefresh > 2000) {
        current.lastRefresh = now;
        if (!current.view || !current.view.layers.length || ended) loadView(); else refreshPreviews();
      }
    });
  }
}

function route() {
  const match = location.hash.match(/^#\/jobs\/([^/]+)$/);
  const done = match ? showJob(decodeURIComponent(match[1])) : showJobs();
  done.catch((err) => {
    if (err.message !== "login needed") {
      document.title = `pytc-service: ${err.message}`;
      console.error(err);
    }
  });
}

async function refreshList() {
  if ($("jobs").hidden) return;
  const page = await (await api("/v1/jobs?limit=100")).json();
  const ids = page.jobs.map((job) => job.id).join(",");
  if (ids !== listed) {
    await showJobs();
    return;
  }
  for (const job of page.jobs) {
    if (!streams.has(job.id) && rows.has(job.id)) updateRow(rows.get(job.id), job);
  }
}

async function start() {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("z").addEventListener("input", () => {
    current.zChosen = true;
    $("z-value").textContent = $("z").value;
    refreshPreviews();
  });
  window.addEventListener("hashchange", route);
  setInterval(() => refreshList().catch(() => {}), LIST_REFRESH_MS);
  const session = await (await fetch("/session", { credentials: "same-origin" })).json();
  $("logout").hidden = !session.auth || !session.logged_in;
  if (session.auth && !session.logged_in) showLogin(); else route();
}

document.addEventListener("DOMContentLoaded", start);
