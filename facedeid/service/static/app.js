// The page: a form generated from GET /methods, POST /anonymize for images, POST /jobs (polled)
// for videos. Plain JavaScript, no framework, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { methods: [], file: null, beforeUrl: null, resultUrl: null, busy: false };

function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: "Bearer " + token } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    if (typeof detail !== "string") detail = JSON.stringify(detail);
    throw new Error(`${response.status}: ${detail}`);
  }
  return response;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function setMessage(text) { $("message").textContent = text; }

// -- the method form ------------------------------------------------------------------------
function paramInput(param) {
  const wrap = document.createElement("div");
  wrap.className = "param";
  const label = document.createElement("label");
  const id = "param-" + param.name;
  label.htmlFor = id;
  label.textContent = param.name;
  let input;
  if (param.choices) {
    input = document.createElement("select");
    for (const choice of param.choices) {
      const option = document.createElement("option");
      option.value = String(choice);
      option.textContent = String(choice);
      option.selected = choice === param.default;
      input.appendChild(option);
    }
  } else if (param.type === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = Boolean(param.default);
    label.className = "inline";
  } else {
    input = document.createElement("input");
    input.type = param.type === "integer" || param.type === "number" ? "number" : "text";
    if (param.type === "integer") input.step = "1";
    if (param.type === "number") input.step = "any";
    if (param.minimum !== null) input.min = param.minimum;
    if (param.maximum !== null) input.max = param.maximum;
    input.placeholder = "default: " + (Array.isArray(param.default) ? param.default.join(",") : param.default);
  }
  input.id = id;
  input.dataset.param = param.name;
  input.dataset.type = param.type;
  const help = document.createElement("p");
  help.className = "help";
  const ranges = [];
  if (param.minimum !== null || param.maximum !== null) ranges.push(`range ${param.minimum ?? "…"} to ${param.maximum ?? "…"}`);
  if (param.safe_range) ranges.push("safe: " + param.safe_range);
  help.textContent = param.help + (ranges.length ? ` (${ranges.join("; ")})` : "");
  wrap.append(label, input, help);
  return wrap;
}

function showMethod() {
  const method = state.methods.find((m) => m.name === $("method").value);
  const box = $("params");
  box.replaceChildren();
  if (!method) return;
  $("method-summary").textContent = method.summary;
  $("method-weakness").textContent = method.weakness ? "Weak: " + method.weakness : "";
  $("method-weakness").hidden = !method.weakness;
  for (const param of method.params) box.appendChild(paramInput(param));
}

function chosenParams() {
  // Only what the user set: an empty field means the method's own default.
  const params = {};
  for (const input of $("params").querySelectorAll("[data-param]")) {
    const method = state.methods.find((m) => m.name === $("method").value);
    const spec = method.params.find((p) => p.name === input.dataset.param);
    if (input.type === "checkbox") {
      if (input.checked !== Boolean(spec.default)) params[spec.name] = input.checked;
    } else if (input.tagName === "SELECT") {
      if (input.value !== String(spec.default)) params[spec.name] = input.value;
    } else if (input.value.trim() !== "") {
      params[spec.name] = input.type === "number" ? Number(input.value) : input.value.trim();
    }
  }
  return params;
}

async function loadMethods() {
  try {
    state.methods = await (await api("/methods")).json();
  } catch (error) {
    showError("Could not list the methods: " + error.message + (String(error.message).startsWith("401") ? " — enter the access token above." : ""));
    return;
  }
  showError("");
  const select = $("method");
  select.replaceChildren();
  for (const method of state.methods) {
    const option = document.createElement("option");
    option.value = method.name;
    option.textContent = method.name + (method.weakness ? " (weak)" : "");
    select.appendChild(option);
  }
  select.value = state.methods.some((m) => m.name === "mosaic") ? "mosaic" : select.value;
  showMethod();
  updateRunButton();
}

// -- file choice ----------------------------------------------------------------------------
function chooseFile(file) {
  state.file = file || null;
  $("drop-text").textContent = file ? `${file.name} (${(file.size / 1048576).toFixed(2)} MB)` : "Drop an image or video here, or tap to choose one";
  if (state.beforeUrl) URL.revokeObjectURL(state.beforeUrl);
  state.beforeUrl = file ? URL.createObjectURL(file) : null;
  $("compare-box").hidden = true;
  $("video-box").hidden = true;
  $("download").hidden = true;
  $("facts").hidden = true;
  showError("");
  setMessage("");
  updateRunButton();
}

function updateRunButton() {
  $("run").disabled = state.busy || !state.file || !state.methods.length;
}

function requestForm() {
  const form = new FormData();
  form.append("file", state.file, state.file.name);
  form.append("method", $("method").value);
  form.append("params", JSON.stringify(chosenParams()));
  if ($("seed").value.trim() !== "") form.append("seed", $("seed").value.trim());
  form.append("no_face", $("no-face").value);
  form.append("allow_weak", $("allow-weak").checked ? "true" : "false");
  return form;
}

function isVideo(file) { return file.type.startsWith("video/") || /\.(gif|mp4|mov|mkv|webm|avi|m4v)$/i.test(file.name); }

function showFacts(summary, seconds) {
  const faces = summary.faces ?? summary.face_tracks ?? 0;
  $("faces").textContent = summary.face_tracks !== undefined ? `${faces} face track(s)` : String(faces);
  $("elapsed").textContent = `${seconds.toFixed(2)} s (server: ${Number(summary.seconds || 0).toFixed(2)} s)`;
  $("warnings").textContent = (summary.warnings || []).join("; ") || "none";
  $("facts").hidden = false;
}

function offerDownload(blob, name) {
  if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
  state.resultUrl = URL.createObjectURL(blob);
  const link = $("download");
  link.href = state.resultUrl;
  link.download = name;
  link.textContent = "Download " + name;
  link.hidden = false;
  return state.resultUrl;
}

function downloadName(response, fallback) {
  const match = /filename="?([^";]+)"?/.exec(response.headers.get("Content-Disposition") || "");
  return match ? match[1] : fallback;
}

async function runImage(started) {
  const response = await api("/anonymize", { method: "POST", body: requestForm() });
  const summary = JSON.parse(response.headers.get("X-Facedeid-Result") || "{}");
  const blob = await response.blob();
  const url = offerDownload(blob, downloadName(response, "anonymized"));
  $("before-image").src = state.beforeUrl;
  $("result-image").src = url;
  $("compare-box").hidden = false;
  setSlider();
  showFacts(summary, (performance.now() - started) / 1000);
  setMessage(summary.status === "anonymized" ? "Done." : `Done: ${summary.status} (no face found).`);
}

async function runVideo(started) {
  const job = await (await api("/jobs", { method: "POST", body: requestForm() })).json();
  const bar = $("progress");
  bar.hidden = false;
  bar.value = 0;
  let current = job;
  while (current.state === "queued" || current.state === "running") {
    await new Promise((resolve) => setTimeout(resolve, 500));
    current = await (await api("/jobs/" + job.id)).json();
    const p = current.progress;
    bar.value = p.fraction;
    setMessage(current.state === "queued" ? "Waiting for a worker…" :
      (p.frames_done !== null ? `Frame ${p.frames_done}${p.frames_total ? " of " + p.frames_total : ""}` : "Working…"));
  }
  if (current.state !== "done") throw new Error(current.error || "the job " + current.state);
  const response = await api("/jobs/" + job.id + "/result");
  const blob = await response.blob();
  const url = offerDownload(blob, downloadName(response, "anonymized.mp4"));
  api("/jobs/" + job.id, { method: "DELETE" }).catch(() => {});  // the server copy is no longer needed
  bar.value = 1;
  $("before-video").src = state.beforeUrl;
  $("result-video").src = url;
  $("video-box").hidden = false;
  showFacts(current.results[0] || {}, (performance.now() - started) / 1000);
  setMessage("Done.");
}

async function run() {
  if (!state.file) return;
  state.busy = true;
  updateRunButton();
  showError("");
  $("download").hidden = true;
  $("progress").hidden = true;
  setMessage("Uploading and processing…");
  const started = performance.now();
  try {
    if (isVideo(state.file)) await runVideo(started); else await runImage(started);
  } catch (error) {
    setMessage("");
    showError(error.message);
  } finally {
    state.busy = false;
    updateRunButton();
  }
}

function setSlider() {
  $("after-clip").style.clipPath = `inset(0 0 0 ${$("slider").value}%)`;
}

async function start() {
  const drop = $("drop");
  $("file").addEventListener("change", () => chooseFile($("file").files[0]));
  for (const name of ["dragenter", "dragover"]) drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => { event.preventDefault(); if (event.dataTransfer.files.length) chooseFile(event.dataTransfer.files[0]); });
  $("method").addEventListener("change", showMethod);
  $("run").addEventListener("click", run);
  $("slider").addEventListener("input", setSlider);
  $("token").value = sessionStorage.getItem("facedeid-token") || "";
  $("token").addEventListener("change", () => { sessionStorage.setItem("facedeid-token", $("token").value.trim()); loadMethods(); });
  try {
    const health = await (await fetch("/healthz")).json();
    $("token-box").hidden = !health.token_required;
  } catch (_) { /* the methods call below reports the problem */ }
  await loadMethods();
}

document.addEventListener("DOMContentLoaded", start);
