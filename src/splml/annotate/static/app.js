// The annotation page: shows the server's state and sends the annotator's choices.
// The server owns all state; the page only remembers which batch of candidates it shows and
// when the current image appeared (for the seconds spent). It moves on only when the server
// answers that the row is on disk.
"use strict";

const $ = (id) => document.getElementById(id);
let state = null;
let batch = 0;
let shownId;
let shownAt = performance.now();
let busy = false;
let showMap = false;

function secondsSpent() {
  return Math.max(0, (performance.now() - shownAt) / 1000);
}

function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const minutes = Math.round(seconds / 60);
  if (minutes < 1) return "under a minute";
  if (minutes < 60) return `${minutes} min`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

function showNotice(text, kind) {
  const box = $("notice");
  box.textContent = text || "";
  box.className = kind || "";
  box.hidden = !text;
}

async function send(path, body) {
  if (busy) return;
  busy = true;
  document.body.classList.add("busy");
  try {
    const response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
    if (response.ok) {
      showNotice("");
      apply(data);
    } else if (response.status === 409 && data && data.state) {
      apply(data.state);
      showNotice(data.error, "warn");
    } else {
      showNotice((data && data.error) || `The server answered ${response.status}; nothing was saved.`, "error");
    }
  } catch (e) {
    showNotice("The server does not answer, so nothing was saved for this image. Is splml.annotate still running?", "error");
  } finally {
    busy = false;
    document.body.classList.remove("busy");
  }
}

function currentId() {
  return state && state.current ? state.current.id : null;
}

function choose(className) {
  if (!state || !state.current || !className) return;
  send("/api/answer", { id: currentId(), class: className, seconds: secondsSpent() });
}

function skip() {
  if (!state || !state.current) return;
  send("/api/skip", { id: currentId(), seconds: secondsSpent() });
}

function back() {
  if (!state) return;
  send("/api/back", { id: currentId() });
}

function nextBatch() {
  if (!state || !state.current) return;
  batch = (batch + 1) % state.current.batches.length;
  renderCandidates();
}

function toggleMap(on) {
  showMap = on;
  $("map-toggle").checked = on;
  renderMap();
}

function apply(newState) {
  state = newState;
  const id = currentId();
  if (id !== shownId) {
    shownId = id;
    batch = 0;
    shownAt = performance.now();
  }
  render();
}

function render() {
  const s = state;
  $("dataset").textContent = `${s.dataset} · ${s.annotator} → ${s.file}`;
  const done = s.labelled;
  const rate = s.rate_per_minute ? `${s.rate_per_minute.toFixed(1)} / min` : "– / min";
  $("progress-text").textContent =
    `${done} / ${s.total} labelled · ${s.skipped} skipped · ${rate} · ${formatDuration(s.eta_seconds)} left`;
  $("progress-bar").style.width = `${(100 * done) / s.total}%`;
  renderHistogram();

  const cur = s.current;
  document.body.classList.toggle("finished", !cur);
  $("done").hidden = !!cur;
  $("map-toggle-label").hidden = !s.has_maps;
  if (!cur) {
    $("image").removeAttribute("src");
    $("image-id").textContent = "";
    $("position").textContent = "";
    $("status").textContent = "";
    $("train-command").textContent = `python -m splml.train dataset=<this dataset> labels=manual labels.file=${s.file}`;
    renderCandidates();
    renderMap();
    return;
  }
  if ($("image").getAttribute("src") !== cur.image) {
    $("image").src = cur.image;
  }
  $("image-id").textContent = cur.id;
  $("position").textContent = `image ${cur.index + 1} of ${s.total}`;
  const status = $("status");
  status.className = `badge ${cur.status}`;
  status.textContent =
    cur.status === "labelled" ? `answered: ${cur.answer}` : cur.status === "skipped" ? "skipped before" : "";
  $("skip-label").textContent = cur.status === "labelled" ? "Keep answer, go on" : "Skip";
  renderCandidates();
  renderMap();
  if (cur.prefetch) {
    new Image().src = cur.prefetch;
  }
}

function renderCandidates() {
  const box = $("candidates");
  box.replaceChildren();
  const cur = state.current;
  $("next-batch").disabled = !cur;
  $("skip").disabled = !cur;
  if (!cur) {
    $("batch-position").textContent = "";
    return;
  }
  const names = cur.batches[batch];
  names.forEach((name, k) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "candidate";
    if (name === cur.answer) button.classList.add("current-answer");
    button.dataset.class = name;
    const key = document.createElement("kbd");
    key.textContent = String(k + 1);
    button.append(key, document.createTextNode(` ${name}`));
    button.addEventListener("click", () => choose(name));
    box.append(button);
  });
  $("batch-position").textContent = `(${batch + 1} / ${cur.batches.length})`;
}

function renderMap() {
  const cur = state && state.current;
  const visible = showMap && state && state.has_maps && !!cur;
  $("map-figure").hidden = !visible;
  document.querySelector(".pictures").classList.toggle("with-map", visible);
  if (!visible) return;
  if ($("map").getAttribute("src") !== cur.map) $("map").src = cur.map;
  const legend = $("legend");
  legend.replaceChildren();
  for (const entry of cur.map_legend) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = entry.colour;
    item.append(swatch, document.createTextNode(entry.name));
    legend.append(item);
  }
}

function renderHistogram() {
  const list = $("histogram");
  list.replaceChildren();
  const rows = state.histogram.filter((h) => h.count > 0).sort((a, b) => b.count - a.count);
  const most = rows.length ? rows[0].count : 1;
  for (const row of rows) {
    const item = document.createElement("li");
    const bar = document.createElement("span");
    bar.className = "hbar";
    bar.style.width = `${(100 * row.count) / most}%`;
    const label = document.createElement("span");
    label.className = "hlabel";
    label.textContent = `${row.name}`;
    const count = document.createElement("span");
    count.className = "hcount";
    count.textContent = String(row.count);
    item.append(bar, label, count);
    list.append(item);
  }
  if (!rows.length) {
    const item = document.createElement("li");
    item.className = "muted";
    item.textContent = "none yet";
    list.append(item);
  }
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.altKey || event.metaKey || busy || !state) return;
  const key = event.key;
  let handled = true;
  if (key >= "1" && key <= "9") {
    const names = state.current ? state.current.batches[batch] : [];
    choose(names[Number(key) - 1]);
  } else if (key === "n" || key === "N") {
    nextBatch();
  } else if (key === "s" || key === "S") {
    skip();
  } else if (key === "b" || key === "B" || key === "Backspace" || key === "ArrowLeft") {
    back();
  } else if ((key === "m" || key === "M") && state.has_maps) {
    toggleMap(!showMap);
  } else {
    handled = false;
  }
  if (handled) event.preventDefault();
});

window.addEventListener("DOMContentLoaded", async () => {
  $("next-batch").addEventListener("click", nextBatch);
  $("skip").addEventListener("click", skip);
  $("back").addEventListener("click", back);
  $("map-toggle").addEventListener("change", (event) => toggleMap(event.target.checked));
  $("image").addEventListener("load", () => {
    shownAt = performance.now(); // time spent counts from when the image is visible
  });
  try {
    const response = await fetch("/api/state");
    apply(await response.json());
  } catch (e) {
    showNotice("Cannot reach the annotation server.", "error");
  }
});
