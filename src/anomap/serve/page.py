"""The web page at `/`: one self-contained HTML document (inline CSS and script, no external
assets, so it works offline). Kept as a Python string so it ships inside the package."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>anomap</title>
<link rel="icon" href="data:,">
<style>
  :root {
    --bg: #f5f6f8; --card: #fff; --text: #1d2129; --muted: #646b78; --line: #dde1e7;
    --accent: #3b5bdb; --ok: #1f7a45; --bad: #c62f37; --none: #7b8190;
  }
  * { box-sizing: border-box; }
  body {
    margin: 0; background: var(--bg); color: var(--text);
    font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  }
  main { max-width: 1040px; margin: 0 auto; padding: 24px 20px 48px; }
  h1 { font-size: 22px; margin: 0 0 2px; }
  #model { color: var(--muted); margin: 0 0 20px; font-size: 14px; }
  form { display: grid; gap: 12px; }
  #drop {
    display: block; border: 2px dashed var(--line); border-radius: 10px; background: var(--card);
    padding: 28px; text-align: center; cursor: pointer; color: var(--muted);
  }
  #drop strong { color: var(--accent); }
  #drop.over { border-color: var(--accent); background: #eef2ff; }
  #drop input { display: none; }
  .controls { display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
  select, button {
    font: inherit; padding: 6px 10px; border-radius: 6px; border: 1px solid var(--line);
  }
  button { background: var(--accent); color: #fff; border-color: var(--accent); cursor: pointer; }
  button:disabled { opacity: .5; cursor: default; }
  .hint { color: var(--muted); font-size: 13px; }
  #results { display: grid; gap: 16px; margin-top: 24px; }
  .card {
    background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 16px;
  }
  .head { display: flex; justify-content: space-between; gap: 12px; align-items: baseline; }
  .name { font-weight: 600; overflow-wrap: anywhere; }
  .badge { border-radius: 999px; padding: 2px 12px; color: #fff; font-weight: 600; font-size: 13px;
           white-space: nowrap; background: var(--none); }
  .badge.ok { background: var(--ok); }
  .badge.bad { background: var(--bad); }
  .facts { color: var(--muted); font-size: 14px; margin: 4px 0 12px;
           font-variant-numeric: tabular-nums; }
  .facts b { color: var(--text); font-weight: 600; }
  .pair { display: grid; grid-template-columns: repeat(2, minmax(0, 360px)); gap: 12px; }
  figure { margin: 0; }
  figure img { display: block; width: 100%; height: auto; border-radius: 6px; background: #e9ecf1; }
  figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
  .error { color: var(--bad); }
</style>
</head>
<body>
<main>
  <h1>anomap</h1>
  <p id="model">loading model information…</p>
  <form id="form" action="predict?overlay=1" method="post" enctype="multipart/form-data">
    <label id="drop">
      <input id="files" name="image" type="file" accept="image/*" multiple>
      <strong>Choose images</strong> or drop them here
    </label>
    <div class="controls">
      <label id="category-row" hidden>Category
        <select id="category" name="category"></select>
      </label>
      <button id="score" type="submit" disabled>Score</button>
      <span class="hint">
        White outlines mark pixels above the threshold learnt from good images.
      </span>
    </div>
  </form>
  <section id="results" aria-live="polite"></section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let info = null;
let chosen = [];

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function number(value) {
  return value === null || value === undefined ? "n/a" : Number(value).toPrecision(4);
}

async function loadInfo() {
  try {
    const response = await fetch("info");
    info = await response.json();
  } catch (error) {
    $("model").textContent = "cannot reach the server: " + error.message;
    return;
  }
  const size = info.input_size ? info.input_size.join("×") : "resize " + info.input.resize;
  const threshold =
    info.threshold === null ? "not calibrated" : "threshold " + number(info.threshold);
  $("model").textContent = [info.method, info.backbone.name, "input " + size, threshold,
                            "anomap " + info.anomap_version].join(" · ");
  if (info.categories.length) {
    const select = $("category");
    if (!info.default_category) select.append(new Option("any (global threshold)", ""));
    for (const name of info.categories) select.append(new Option(name, name));
    select.value = info.default_category || "";
    $("category-row").hidden = false;
  }
}

function card(file) {
  const root = element("article", "card");
  const head = element("div", "head");
  head.append(element("span", "name", file.name), element("span", "badge", "scoring…"));
  const facts = element("div", "facts");
  const pair = element("div", "pair");
  const original = element("figure");
  const image = element("img");
  image.src = URL.createObjectURL(file);
  image.alt = file.name;
  original.append(image, element("figcaption", "", "original"));
  pair.append(original);
  root.append(head, facts, pair);
  return root;
}

function show(root, row, total) {
  const badge = root.querySelector(".badge");
  if (row.is_anomalous === null) {
    badge.textContent = "no threshold";
  } else {
    badge.textContent = row.is_anomalous ? "ANOMALY" : "OK";
    badge.classList.add(row.is_anomalous ? "bad" : "ok");
  }
  const facts = root.querySelector(".facts");
  const items = [["score", number(row.score)], ["normalised", number(row.normalized)],
                 ["threshold", number(row.threshold)]];
  if (row.category) items.push(["category", row.category]);
  items.push(["time", Math.round(total) + " ms"]);
  items.forEach(([label, value], i) => {
    if (i) facts.append(" · ");
    facts.append(label + " ", element("b", "", value));
  });
  const figure = element("figure");
  const heat = element("img");
  heat.src = "data:image/png;base64," + row.overlay_png;
  heat.alt = "anomaly heat map of " + row.filename;
  const size = info && info.input_size ? " (model input " + info.input_size.join("×") + ")" : "";
  figure.append(heat, element("figcaption", "", "anomaly heat map" + size));
  root.querySelector(".pair").append(figure);
}

function fail(root, message) {
  const badge = root.querySelector(".badge");
  badge.textContent = "error";
  badge.classList.add("bad");
  root.querySelector(".facts").append(element("span", "error", message));
  root.querySelector(".pair").remove();  // a file the server cannot read, the browser neither
}

async function score(files) {
  const results = $("results");
  results.replaceChildren();
  $("score").disabled = true;
  const category = $("category-row").hidden ? "" : $("category").value;
  for (const file of files) {
    const root = card(file);
    results.append(root);
    if (info && file.size > info.max_body_bytes) {
      fail(root, "file is larger than the server's limit of " + info.max_body_bytes + " bytes");
      continue;
    }
    const query = new URLSearchParams({overlay: "1", filename: file.name});
    if (category) query.set("category", category);
    try {
      const response = await fetch("predict?" + query, {
        method: "POST",
        headers: {"Content-Type": file.type || "application/octet-stream"},
        body: file,
      });
      const data = await response.json();
      if (!response.ok) throw new Error(data.error || response.statusText);
      show(root, data.images[0], data.timing_ms.total);
    } catch (error) {
      fail(root, error.message);
    }
  }
  $("score").disabled = chosen.length === 0;
}

function choose(files) {
  chosen = Array.from(files);
  if (chosen.length) score(chosen);
}

$("files").addEventListener("change", (event) => choose(event.target.files));
$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (chosen.length) score(chosen);
});
$("category").addEventListener("change", () => { if (chosen.length) score(chosen); });
const drop = $("drop");
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("over"));
}
for (const name of ["dragover", "drop"]) {  // a file dropped beside the zone must not open
  window.addEventListener(name, (event) => event.preventDefault());
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  choose(event.dataTransfer.files);
});
loadInfo();
</script>
</body>
</html>
"""
