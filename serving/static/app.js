// The search page: plain DOM + fetch, no framework, no build step.
// URLs are relative ("search", "media/1") so the page works under any Serve route prefix.
// `?q=...` (and optionally `&modality=...&limit=...&fusion=M`) runs a search on load, so a search can be
// linked or bookmarked. When the server has an API key the browser's Basic-auth prompt (any user
// name, the key as password) covers the page, its fetches and its thumbnails alike.
"use strict";

const $ = (id) => document.getElementById(id);
const state = (s) => { document.body.dataset.state = s; };

function options() {
  const limit = Math.max(1, Math.min(100, parseInt($("limit").value, 10) || 12));
  const modality = $("modality").value || null;
  // Empty means no fusion stage; M below the hit count is raised to it (the server needs M >= limit).
  const m = parseInt($("fusion").value, 10);
  const fusionLimit = Number.isFinite(m) && m > 0 ? Math.min(200, Math.max(m, limit)) : null;
  return { limit, modality, fusionLimit };
}

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

function showTimings(t, hits) {
  const box = $("timings");
  box.textContent = "";
  const chips = [
    ["encode", t.encode_ms], ["coarse", t.coarse_ms], ["fine", t.fine_ms],
    ["search", t.search_ms],
  ];
  if (t.fusion_ms !== null && t.fusion_ms !== undefined) chips.push(["fusion", t.fusion_ms]);
  chips.push(["total", t.total_ms]);
  for (const [name, ms] of chips) {
    const chip = document.createElement("span");
    chip.className = "chip " + name;
    chip.textContent = `${name} ${ms.toFixed(1)} ms`;
    box.appendChild(chip);
  }
  const extra = document.createElement("span");
  extra.className = "chip meta";
  extra.textContent = `${hits} hits, encoder batch of ${t.batch_size}`;
  box.appendChild(extra);
}

function card(hit, rank, fused) {
  const fig = document.createElement("figure");
  fig.className = "hit " + hit.modality;
  fig.dataset.id = hit.id;
  fig.dataset.key = hit.key;
  if (hit.modality === "image" && hit.media_url) {
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = hit.key;
    img.src = hit.media_url;
    img.onerror = () => { img.replaceWith(placeholder(hit.key)); };
    fig.appendChild(img);
  } else if (hit.modality === "image") {
    fig.appendChild(placeholder(hit.key));
  } else {
    const quote = document.createElement("blockquote");
    quote.textContent = hit.reference;
    fig.appendChild(quote);
  }
  const cap = document.createElement("figcaption");
  const coarse = hit.coarse_score === null ? "n/a" : hit.coarse_score.toFixed(3);
  cap.innerHTML = `<span class="rank">#${rank}</span> <span class="score" title="fine score">${hit.score.toFixed(3)}</span>`
    + ` <span class="coarse" title="coarse score">coarse ${coarse}</span>`;
  if (fused) {
    const span = document.createElement("span");
    span.className = "fusion-score";
    span.title = hit.fusion_error || "fusion score (the ranking)";
    span.textContent = " fusion " + (hit.fusion_score === null ? "n/a" : hit.fusion_score.toFixed(3));
    cap.appendChild(span);
  }
  const key = document.createElement("div");
  key.className = "key";
  key.textContent = hit.key;
  cap.appendChild(key);
  fig.appendChild(cap);
  return fig;
}

function placeholder(text) {
  const div = document.createElement("div");
  div.className = "noimg";
  div.textContent = text || "(no image file)";
  return div;
}

function render(data) {
  const grid = $("results");
  grid.textContent = "";
  const fused = data.timings.fusion_ms !== null && data.timings.fusion_ms !== undefined;
  data.hits.forEach((hit, i) => grid.appendChild(card(hit, i + 1, fused)));
  const what = data.query === "text" ? "text" : "image";
  setStatus(`${data.hits.length} ${data.modality === "all" ? "items" : data.modality + "s"} for the ${what} query`
    + (data.filter ? ` (filter: ${data.filter})` : "")
    + (fused ? ", re-ranked with fusion" : ""), false);
  showTimings(data.timings, data.hits.length);
  state("done");
}

// A request that dies with an ingress replica is answered by Serve's proxy, not by the app: a 5xx
// without the app's JSON error ({error, message}), e.g. a plain-text "500 Internal Server Error", or
// a dropped connection. Searches are idempotent, so such a request is sent once more, after a short
// back-off, to the replicas still running. The app's own JSON errors are final.
const RETRY_BACKOFF_MS = 500;

async function diedInTransit(response) {
  if (response.status < 500) return false;
  const body = await response.clone().json().catch(() => null);
  return !(body && typeof body === "object" && body.error);
}

async function fetchRetrying(url, init, backoffMs = RETRY_BACKOFF_MS) {
  try {
    const response = await fetch(url, init);
    if (!(await diedInTransit(response))) return response;
  } catch (err) {
    if (!(err instanceof TypeError)) throw err;  // fetch rejects with a TypeError on a network failure
  }
  await new Promise((resolve) => setTimeout(resolve, backoffMs));
  return fetch(url, init);
}

async function run(request) {
  state("loading");
  setStatus("searching\u2026", false);
  try {
    const response = await fetchRetrying(request.url, request.init);
    const body = await response.json().catch(() => ({ message: response.statusText }));
    if (!response.ok) {
      throw new Error(`${response.status} ${body.error || ""}: ${body.message || response.statusText}`);
    }
    render(body);
  } catch (err) {
    $("results").textContent = "";
    $("timings").textContent = "";
    setStatus(String(err.message || err), true);
    state("error");
  }
}

function searchText(text) {
  const { limit, modality, fusionLimit } = options();
  const params = new URLSearchParams({ q: text });
  if (modality) params.set("modality", modality);
  if (fusionLimit) params.set("fusion", String(fusionLimit));
  history.replaceState(null, "", "?" + params.toString());
  $("query-preview").hidden = true;
  const body = { text, limit };
  if (modality) body.modality = modality;
  if (fusionLimit) body.fusion_limit = fusionLimit;
  return run({
    url: "search",
    init: { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) },
  });
}

function searchImage(file) {
  const { limit, modality, fusionLimit } = options();
  const form = new FormData();
  form.append("file", file, file.name || "query");
  form.append("limit", String(limit));
  if (modality) form.append("modality", modality);
  if (fusionLimit) form.append("fusion_limit", String(fusionLimit));
  $("query-image").src = URL.createObjectURL(file);
  $("query-name").textContent = file.name || "";
  $("query-preview").hidden = false;
  return run({ url: "search/image", init: { method: "POST", body: form } });
}

$("text-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("q").value.trim();
  if (text) searchText(text);
});

$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (file) searchImage(file);
});

const drop = $("drop");
["dragenter", "dragover"].forEach((name) => document.addEventListener(name, (event) => {
  event.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((name) => document.addEventListener(name, (event) => {
  event.preventDefault();
  drop.classList.remove("over");
}));
document.addEventListener("drop", (event) => {
  const file = event.dataTransfer && event.dataTransfer.files[0];
  if (file) searchImage(file);
});

(function startFromUrl() {
  const params = new URLSearchParams(location.search);
  if (params.get("modality")) $("modality").value = params.get("modality");
  if (params.get("limit")) $("limit").value = params.get("limit");
  if (params.get("fusion")) $("fusion").value = params.get("fusion");
  const q = params.get("q");
  if (q) {
    $("q").value = q;
    searchText(q);
  }
})();
