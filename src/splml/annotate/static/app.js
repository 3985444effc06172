// The annotation page: shows the server's state and sends the annotator's choices.
// The server owns all state; the page remembers which batch of candidates it shows, when the
// current image appeared (for the seconds spent), the view (bands, contrast: kept in
// localStorage) and the zoom. Every request carries the display token the image came with, and
// the page takes input for an image only once it has been on screen for min_view_ms: a held key
// or a double click cannot answer an image nobody has seen. It moves on only when the server
// answers that the row is on disk.
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = "splml.annotate.";
let state = null;
let batch = 0;
let seenBatches = new Set([0]);
let shownDisplay;
let timedDisplay;
let shownAt = performance.now();
let busy = false;
let armed = false;
let armTimer = null;
let showMap = false;
let imageError = null;
const keysDown = new Set();
const zoom = { scale: 1, x: 0, y: 0 };
let drag = null;

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

// -- input gating ----------------------------------------------------------------------------
function disarm() {
  armed = false;
  clearTimeout(armTimer);
  document.body.classList.add("arming");
}

function armSoon() {
  clearTimeout(armTimer);
  armTimer = setTimeout(() => {
    armed = true;
    document.body.classList.remove("arming");
  }, state ? state.min_view_ms : 250);
}

function ready() {
  return state && armed && !busy;
}

// -- requests --------------------------------------------------------------------------------
async function send(path, extra) {
  if (!ready()) return;
  busy = true;
  document.body.classList.add("busy");
  const body = { id: currentId(), display: state.display, ...extra };
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
      apply(data);
      showNotice(data.notice || "", "info");
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

function hasImage() {
  return !!(state && state.current);
}

function canAnswer() {
  return hasImage() && !imageError;
}

function choose(className) {
  if (!canAnswer() || !className) return;
  send("/api/answer", { class: className, seconds: secondsSpent() });
}

function skip() {
  if (!hasImage()) return;
  send("/api/skip", { seconds: secondsSpent() });
}

function noneOfThese() {
  if (!canAnswer() || !allBatchesSeen()) return;
  send("/api/none", { seconds: secondsSpent() });
}

function back() {
  send("/api/back", {});
}

function undo() {
  send("/api/undo", {});
}

function goTo(target) {
  if (target === "" || target === null || target === undefined) return;
  send("/api/goto", { target });
}

function review(className) {
  send("/api/review", { class: className || "" });
}

function openFlag() {
  if (!hasImage() || !ready()) return;
  $("flag-form").hidden = false;
  $("flag-note").value = "";
  $("flag-note").focus();
}

function closeFlag() {
  $("flag-form").hidden = true;
  $("flag-note").blur();
}

function submitFlag(event) {
  event.preventDefault();
  const note = $("flag-note").value.trim();
  if (!note) {
    showNotice("A flag needs a note saying what is wrong with the image.", "warn");
    return;
  }
  closeFlag();
  send("/api/flag", { note, seconds: secondsSpent() });
}

function allBatchesSeen() {
  return hasImage() && seenBatches.size >= state.current.batches.length;
}

function nextBatch() {
  if (!hasImage()) return;
  batch = (batch + 1) % state.current.batches.length;
  seenBatches.add(batch);
  renderCandidates();
}

function toggleMap(on) {
  showMap = on;
  $("map-toggle").checked = on;
  renderMap();
}

// -- view: bands, contrast, zoom -----------------------------------------------------------------
function viewChoice(kind) {
  const offered = state.views[kind === "composite" ? "composites" : "stretches"].map((c) => c.name);
  const kept = localStorage.getItem(STORE + kind);
  return offered.includes(kept) ? kept : state.views.default[kind];
}

function setView(kind, value) {
  localStorage.setItem(STORE + kind, value);
  renderViewControls();
  renderImage();
}

function cycleView(kind) {
  const offered = state.views[kind === "composite" ? "composites" : "stretches"].map((c) => c.name);
  const next = offered[(offered.indexOf(viewChoice(kind)) + 1) % offered.length];
  setView(kind, next);
}

function imageUrl(path) {
  const query = new URLSearchParams({ composite: viewChoice("composite"), stretch: viewChoice("stretch") });
  return `${path}?${query}`;
}

function applyZoom() {
  const transform = `translate(${zoom.x}px, ${zoom.y}px) scale(${zoom.scale})`;
  $("image").style.transform = transform;
  $("map").style.transform = transform;
  $("zoom-level").textContent = `${Math.round(zoom.scale * 100)} %`;
  document.body.classList.toggle("zoomed", zoom.scale > 1);
}

function clampPan() {
  const frame = $("image-frame").getBoundingClientRect();
  zoom.x = Math.min(0, Math.max(frame.width * (1 - zoom.scale), zoom.x));
  zoom.y = Math.min(0, Math.max(frame.height * (1 - zoom.scale), zoom.y));
}

function zoomAt(factor, px, py) {
  const frame = $("image-frame").getBoundingClientRect();
  const x = px === undefined ? frame.width / 2 : px;
  const y = py === undefined ? frame.height / 2 : py;
  const scale = Math.min(16, Math.max(1, zoom.scale * factor));
  zoom.x = x - ((x - zoom.x) * scale) / zoom.scale;
  zoom.y = y - ((y - zoom.y) * scale) / zoom.scale;
  zoom.scale = scale;
  clampPan();
  applyZoom();
}

function resetZoom() {
  zoom.scale = 1;
  zoom.x = 0;
  zoom.y = 0;
  applyZoom();
}

// -- state -----------------------------------------------------------------------------------
function apply(newState) {
  const changed = newState.display !== shownDisplay;
  state = newState;
  if (changed) {
    shownDisplay = state.display;
    batch = 0;
    seenBatches = new Set([0]);
    shownAt = performance.now();
    disarm();
    closeFlag();
    resetZoom();
  }
  render();
}

function render() {
  const s = state;
  const shard = s.shard ? ` · shard ${s.shard}` : "";
  $("dataset").textContent = `${s.dataset} · ${s.annotator} → ${s.file}${shard}`;
  const rate = s.rate_per_minute ? `${s.rate_per_minute.toFixed(1)} / min` : "– / min";
  const others = [
    `${s.skipped} skipped`,
    s.none ? `${s.none} none of these` : "",
    s.flagged ? `${s.flagged} flagged` : "",
  ].filter(Boolean);
  $("progress-text").textContent =
    `${s.labelled} / ${s.total} labelled · ${others.join(" · ")} · ${rate} · ${formatDuration(s.eta_seconds)} left`;
  $("progress-bar").style.width = `${(100 * (s.labelled + s.none + s.flagged)) / s.total}%`;
  renderHistogram();
  renderHistory();
  renderReview();
  renderTrail();
  renderViewControls();
  $("undo").disabled = !s.undo;
  $("undo").title = s.undo ? `Undo ${s.undo}` : "Nothing to undo";

  const cur = s.current;
  document.body.classList.toggle("finished", !cur);
  $("done").hidden = !!cur;
  $("map-toggle-label").hidden = !s.has_maps;
  if (!cur) {
    $("image").removeAttribute("src");
    imageError = null;
    $("image-error").hidden = true;
    $("image-id").textContent = "";
    $("position").textContent = "";
    $("status").textContent = "";
    $("train-command").textContent = s.next_steps.join("\n");
    $("done-text").textContent = s.shard
      ? `Your shard (${s.shard}) is complete. Merge every annotator's file, then train on the merged one:`
      : "The annotation file is complete. Train on it with";
    renderCandidates();
    renderMap();
    armSoon();
    return;
  }
  $("image-id").textContent = cur.id;
  $("position").textContent = `image ${cur.index + 1} of ${s.total}`;
  const status = $("status");
  status.className = `badge ${cur.status}`;
  status.textContent = {
    labelled: `answered: ${cur.answer}`,
    skipped: "skipped before",
    none: "none of these",
    flagged: `flagged: ${cur.note}`,
    pending: "",
  }[cur.status];
  $("skip-label").textContent = cur.status === "pending" || cur.status === "skipped" ? "Skip" : "Keep, go on";
  renderImage();
  renderCandidates();
  renderMap();
  if (cur.prefetch) {
    new Image().src = imageUrl(cur.prefetch);
  }
}

function renderImage() {
  const cur = state && state.current;
  if (!cur) return;
  if (cur.problem) {
    showImageError(cur.problem);
    return;
  }
  const url = imageUrl(cur.image);
  const image = $("image");
  if (image.getAttribute("src") !== url) {
    imageError = null;
    $("image-error").hidden = true;
    image.hidden = false;
    image.src = url; // load (or error) arms the page
  } else if (image.complete && !imageError) {
    imageShown();
  }
}

function imageShown() {
  if (timedDisplay !== state.display) {
    timedDisplay = state.display;
    shownAt = performance.now(); // time spent counts from when the image is visible
  }
  armSoon();
}

async function imageFailed() {
  const cur = state && state.current;
  if (!cur) return;
  const url = $("image").getAttribute("src");
  let message = `${cur.id} cannot be shown`;
  try {
    const response = await fetch(url);
    const data = await response.json();
    if (data && data.error) message = data.error;
  } catch (e) {
    // the message above names the image
  }
  if (state.current && state.current.id === cur.id) showImageError(message);
}

function showImageError(message) {
  imageError = message;
  $("image").hidden = true;
  const box = $("image-error");
  box.textContent = `${message}. Only Skip or Flag can be recorded for this image.`;
  box.hidden = false;
  renderCandidates();
  armSoon();
}

function renderViewControls() {
  const fill = (select, options, chosen) => {
    if (select.options.length !== options.length || [...select.options].some((o, k) => o.value !== options[k].name)) {
      select.replaceChildren(...options.map((o) => new Option(o.label, o.name)));
    }
    select.value = chosen;
  };
  fill($("composite"), state.views.composites, viewChoice("composite"));
  fill($("stretch"), state.views.stretches, viewChoice("stretch"));
  $("composite-label").hidden = state.views.composites.length < 2;
}

function renderCandidates() {
  const box = $("candidates");
  box.replaceChildren();
  const cur = state.current;
  const answerable = canAnswer();
  $("next-batch").disabled = !answerable;
  $("skip").disabled = !cur;
  $("flag").disabled = !cur;
  $("none").hidden = !answerable || !allBatchesSeen();
  if (!cur) {
    $("batch-position").textContent = "";
    return;
  }
  const names = cur.batches[batch];
  names.forEach((name, k) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "candidate";
    button.disabled = !answerable;
    if (name === cur.answer) button.classList.add("current-answer");
    button.dataset.class = name;
    const key = document.createElement("kbd");
    key.textContent = String(k + 1);
    button.append(key, document.createTextNode(` ${name}`));
    button.addEventListener("click", (event) => {
      if (event.detail > 1) return; // the second click of a double click
      choose(name);
    });
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

function renderTrail() {
  const trail = state.trail;
  $("trail").hidden = !trail;
  if (!trail) return;
  const where = `${trail.position + 1} / ${trail.length}`;
  $("trail-text").textContent = {
    history: `Going back through the answers, newest first (${where}); S keeps an answer and goes on.`,
    review: `Reviewing the answers “${trail.label}” (${where}); S keeps an answer and goes on.`,
    undo: `Undone: answer this image again (${where}).`,
    jump: "Shown by Go to / history; after an answer the queue goes on.",
  }[trail.kind];
}

function renderHistory() {
  const list = $("history");
  list.replaceChildren();
  for (const entry of state.history) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "history-entry";
    const thumb = document.createElement("img");
    thumb.src = entry.thumb;
    thumb.alt = "";
    thumb.addEventListener("error", () => thumb.classList.add("broken"));
    const what = document.createElement("span");
    what.className = "history-class";
    what.textContent =
      entry.status === "labelled" ? entry.class : entry.status === "none" ? "none of these" : entry.status;
    const name = document.createElement("span");
    name.className = "history-id";
    name.textContent = entry.id; // cut from the left: the end of an id tells images apart
    button.title = `${entry.id}: ${what.textContent}${entry.note ? ` (${entry.note})` : ""}`;
    button.append(thumb, what, name);
    button.addEventListener("click", (event) => {
      if (event.detail > 1) return;
      goTo(entry.id);
    });
    item.append(button);
    list.append(item);
  }
  if (!state.history.length) {
    const item = document.createElement("li");
    item.className = "muted";
    item.textContent = "none yet";
    list.append(item);
  }
}

function renderReview() {
  const select = $("review");
  const trail = state.trail;
  const options = [new Option("— (the queue)", "")];
  for (const row of state.histogram.filter((h) => h.count > 0)) {
    options.push(new Option(`${row.name} (${row.count})`, row.name));
  }
  select.replaceChildren(...options);
  select.value = trail && trail.kind === "review" ? trail.label : "";
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

// -- keyboard: digits by physical key (event.code), letters as typed --------------------------------
// Digits by position, so layouts where they need Shift (AZERTY) answer with the unshifted key;
// letters by the character typed, so S, U, Ctrl+Z... are where the layout puts them (QWERTZ,
// AZERTY, Dvorak), and by position where the layout types no Latin letter (Cyrillic, Greek).
function actionCode(event) {
  return /^[a-z]$/i.test(event.key) ? `Key${event.key.toUpperCase()}` : event.code;
}

const KEY_ACTIONS = {
  KeyN: nextBatch,
  KeyX: noneOfThese,
  KeyS: skip,
  KeyB: back,
  ArrowLeft: back,
  Backspace: back,
  KeyU: undo,
  KeyF: openFlag,
  KeyG: () => $("goto-target").focus(),
  KeyM: () => state.has_maps && toggleMap(!showMap),
  KeyV: () => cycleView("composite"),
  KeyC: () => cycleView("stretch"),
  Equal: () => zoomAt(1.5),
  NumpadAdd: () => zoomAt(1.5),
  Minus: () => zoomAt(1 / 1.5),
  NumpadSubtract: () => zoomAt(1 / 1.5),
  Digit0: resetZoom,
  Numpad0: resetZoom,
  Escape: () => state.trail && review(""),
};

document.addEventListener("keydown", (event) => {
  const target = event.target;
  const typing = (target instanceof HTMLInputElement && target.type === "text") || target instanceof HTMLSelectElement;
  if (typing) {
    if (event.code === "Escape") {
      closeFlag();
      target.blur();
    }
    return;
  }
  if (event.repeat || keysDown.has(event.code)) {
    event.preventDefault(); // a held key acts once
    return;
  }
  keysDown.add(event.code);
  if (!state) return;
  const code = actionCode(event);
  if ((event.ctrlKey || event.metaKey) && code === "KeyZ") {
    event.preventDefault();
    undo();
    return;
  }
  if (event.ctrlKey || event.altKey || event.metaKey) return;
  const digit = /^(?:Digit|Numpad)([1-9])$/.exec(event.code);
  if (digit) {
    const names = state.current ? state.current.batches[batch] : [];
    choose(names[Number(digit[1]) - 1]);
    event.preventDefault();
    return;
  }
  const action = KEY_ACTIONS[code];
  if (action) {
    event.preventDefault();
    action();
  }
});
document.addEventListener("keyup", (event) => keysDown.delete(event.code));
window.addEventListener("blur", () => keysDown.clear());

function once(handler) {
  return (event) => {
    if (event.detail > 1) return; // the second click of a double click
    handler();
  };
}

window.addEventListener("DOMContentLoaded", async () => {
  $("next-batch").addEventListener("click", nextBatch);
  $("none").addEventListener("click", once(noneOfThese));
  $("skip").addEventListener("click", once(skip));
  $("back").addEventListener("click", once(back));
  $("undo").addEventListener("click", once(undo));
  $("flag").addEventListener("click", once(openFlag));
  $("flag-form").addEventListener("submit", submitFlag);
  $("goto-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const target = $("goto-target").value.trim();
    $("goto-target").blur();
    goTo(target);
    $("goto-target").value = "";
  });
  $("review").addEventListener("change", (event) => {
    event.target.blur();
    review(event.target.value);
  });
  $("leave-trail").addEventListener("click", once(() => review("")));
  $("map-toggle").addEventListener("change", (event) => toggleMap(event.target.checked));
  $("composite").addEventListener("change", (event) => {
    event.target.blur();
    setView("composite", event.target.value);
  });
  $("stretch").addEventListener("change", (event) => {
    event.target.blur();
    setView("stretch", event.target.value);
  });
  $("zoom-in").addEventListener("click", () => zoomAt(1.5));
  $("zoom-out").addEventListener("click", () => zoomAt(1 / 1.5));
  $("zoom-reset").addEventListener("click", resetZoom);
  const frame = $("image-frame");
  frame.addEventListener(
    "wheel",
    (event) => {
      event.preventDefault();
      const box = frame.getBoundingClientRect();
      zoomAt(event.deltaY < 0 ? 1.25 : 1 / 1.25, event.clientX - box.left, event.clientY - box.top);
    },
    { passive: false },
  );
  frame.addEventListener("pointerdown", (event) => {
    if (zoom.scale <= 1) return;
    drag = { x: event.clientX - zoom.x, y: event.clientY - zoom.y };
    frame.setPointerCapture(event.pointerId);
  });
  frame.addEventListener("pointermove", (event) => {
    if (!drag) return;
    zoom.x = event.clientX - drag.x;
    zoom.y = event.clientY - drag.y;
    clampPan();
    applyZoom();
  });
  frame.addEventListener("pointerup", () => {
    drag = null;
  });
  $("image").addEventListener("load", imageShown);
  $("image").addEventListener("error", () => {
    if ($("image").getAttribute("src")) imageFailed();
  });
  try {
    const response = await fetch("/api/state");
    const data = await response.json();
    if (!response.ok) throw new Error(data.error);
    apply(data);
  } catch (e) {
    showNotice(`Cannot reach the annotation server. ${e.message || ""}`, "error");
  }
});
