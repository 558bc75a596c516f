"""The web page at ``/``: search the loaded index, label a text with the loaded classifier, see each latency.

One self-contained HTML document (inline CSS and JS, no CDN: the server may run where nothing else is
reachable). It learns what is loaded from ``/v1/models`` and calls the same JSON API as any client. Text from
the index is inserted with ``textContent``, never as HTML, so stored text cannot inject markup or script.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>embedkit serve</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
  form { display: flex; gap: .5rem; flex-wrap: wrap; }
  input[type=text], textarea, select { font: inherit; padding: .35rem; }
  input[type=text], textarea { flex: 1 1 24rem; }
  button { font: inherit; padding: .35rem .9rem; }
  ol { padding-left: 1.5rem; } li { margin: .4rem 0; }
  .score { font-family: monospace; color: #555; margin-right: .6rem; }
  .meta { color: #666; font-size: .9rem; } .error { color: #b00020; }
  .text { white-space: pre-wrap; }
  #key-row { margin-bottom: 1rem; }
</style>
</head>
<body>
<h1>embedkit serve</h1>
<div id="key-row" class="meta">API key (only if the server was started with --api-key):
  <input id="api-key" type="password" autocomplete="off" size="24"></div>
<div id="loaded" class="meta">loading...</div>

<h2>Search</h2>
<form id="search-form">
  <input id="query" type="text" placeholder="search the index" required>
  <select id="index-select" aria-label="index"></select>
  <input id="k" type="number" min="1" value="5" style="width:4rem" aria-label="hits">
  <button id="search-btn" type="submit">Search</button>
</form>
<div id="search-latency" class="meta"></div>
<ol id="hits"></ol>

<h2>Label a text</h2>
<form id="label-form">
  <textarea id="label-input" rows="2" placeholder="text to classify" required></textarea>
  <select id="classifier-select" aria-label="classifier"></select>
  <button id="label-btn" type="submit">Label</button>
</form>
<div id="label-latency" class="meta"></div>
<div id="label-result"></div>

<script>
"use strict";
const $ = (id) => document.getElementById(id);
const keyBox = $("api-key");
keyBox.value = sessionStorage.getItem("embedkit-key") || "";
keyBox.addEventListener("change", () => { sessionStorage.setItem("embedkit-key", keyBox.value); loadModels(); });

async function call(method, path, body) {
  const headers = {"Content-Type": "application/json"};
  if (keyBox.value) headers["Authorization"] = "Bearer " + keyBox.value;
  const started = performance.now();
  const response = await fetch(path, {method, headers, body: body ? JSON.stringify(body) : undefined});
  const ms = performance.now() - started;
  let data = null;
  try { data = await response.json(); } catch (e) { data = {error: {message: response.statusText}}; }
  if (!response.ok) throw Object.assign(new Error((data.error || {}).message || response.status), {ms});
  return {data, ms};
}

function fill(select, names) {
  select.replaceChildren(...names.map((n) => new Option(n, n)));
  select.disabled = names.length === 0;
}

async function loadModels() {
  try {
    const {data} = await call("GET", "/v1/models");
    const of = (kind) => data.data.filter((m) => m.embedkit && m.embedkit.kind === kind).map((m) => m.id);
    const indexes = of("index"), classifiers = of("classifier");
    fill($("index-select"), indexes);
    fill($("classifier-select"), classifiers);
    $("search-btn").disabled = indexes.length === 0;
    $("label-btn").disabled = classifiers.length === 0;
    $("loaded").textContent = "indexes: " + (indexes.join(", ") || "none") +
      "; classifiers: " + (classifiers.join(", ") || "none");
  } catch (e) {
    $("loaded").textContent = "could not list what is loaded: " + e.message;
    $("loaded").className = "meta error";
  }
}

function showError(target, latency, e) {
  target.replaceChildren();
  const p = document.createElement("p");
  p.className = "error";
  p.textContent = e.message;
  target.append(p);
  latency.textContent = e.ms !== undefined ? "failed after " + e.ms.toFixed(1) + " ms" : "";
}

$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = {query: $("query").value, k: Number($("k").value) || 5, index: $("index-select").value || null};
  try {
    const {data, ms} = await call("POST", "/v1/search", body);
    const hits = data.data[0].hits;
    $("search-latency").textContent = hits.length + " hits in " + ms.toFixed(1) + " ms";
    $("hits").replaceChildren(...hits.map((hit) => {
      const li = document.createElement("li");
      li.className = "hit";
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = hit.score.toFixed(4);
      const text = document.createElement("span");
      text.className = "text";
      const shown = Object.entries(hit).filter(([k]) => !["rank", "score", "id"].includes(k));
      text.textContent = shown.length ? shown.map(([k, v]) => shown.length > 1 ? k + ": " + v : v).join("  |  ")
                                      : "id " + hit.id;
      li.append(score, text);
      return li;
    }));
  } catch (e) { showError($("hits"), $("search-latency"), e); }
});

$("label-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = {input: $("label-input").value, classifier: $("classifier-select").value || null};
  try {
    const {data, ms} = await call("POST", "/v1/predict", body);
    const row = data.data[0];
    $("label-latency").textContent = "labelled in " + ms.toFixed(1) + " ms";
    const label = document.createElement("p");
    label.id = "label";
    label.textContent = "label: " + row.label;
    const probs = document.createElement("p");
    probs.className = "meta";
    probs.textContent = row.probabilities ? Object.entries(row.probabilities)
      .map(([c, p]) => c + " " + p.toFixed(3)).join(", ") : "";
    $("label-result").replaceChildren(label, probs);
  } catch (e) { showError($("label-result"), $("label-latency"), e); }
});

loadModels();
</script>
</body>
</html>
"""
