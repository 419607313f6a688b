// The review page. Every element is built with the DOM and every user-given text (names, image
// ids, error messages) is set as textContent or an attribute, never as HTML: a name such as
// <img onerror=...> shows as text. The Content-Security-Policy forbids inline script besides.
//
// Views: the review queue ("#" or "#photo=ID") and an individual's page ("#individual=NAME").
// Keys in the queue: 1-5 confirm a candidate, N new individual, U undo, arrows move.
"use strict";
const $ = (id) => document.getElementById(id);
const state = {queue: [], reviewed: 0, current: null, candidates: [], individuals: [],
               order: "added", polling: null, redrawMatches: null};

function element(tag, properties = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(properties)) {
    if (key === "data") Object.assign(node.dataset, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);  // strings become text nodes
  return node;
}
const photoUrl = (imageId) => `/photo?image_id=${encodeURIComponent(imageId)}`;
const query = (parameters) => new URLSearchParams(parameters).toString();

async function call(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}
function post(url, fields) {
  const form = new FormData();
  for (const [key, value] of Object.entries(fields)) {
    for (const item of Array.isArray(value) ? value : [value]) form.append(key, item);
  }
  return call(url, {method: "POST", body: form});
}
function fail(error) { $("error").textContent = error.message; }
function say(text) { $("error").textContent = ""; $("status").textContent = text; }

// -- individuals ---------------------------------------------------------------------------
async function loadIndividuals() {
  state.individuals = await call("/api/individuals");
  const filter = $("filter").value.trim().toLowerCase();
  $("individuals").replaceChildren(...state.individuals
    .filter((row) => !filter || row.name.toLowerCase().includes(filter))
    .map((row) => {
      const item = element("li", {textContent: `${row.name} (${row.photos})`,
                                  data: {name: row.name}, tabIndex: 0});
      item.addEventListener("click", () => { location.hash = `individual=${encodeURIComponent(row.name)}`; });
      return item;
    }));
}
async function showIndividual(name) {
  const page = await call(`/api/individual?${query({name})}`);
  $("review").hidden = true; $("individual-page").hidden = false;
  $("status").textContent = "";  // the queue's last word does not belong to this page
  $("individual-name").textContent = page.name;
  const orientations = page.orientations.length ? page.orientations.join(", ") : "not recorded";
  // Dates only where photos carry one: the day of import is not a sighting.
  const seen = page.dated ? `seen ${page.first}` + (page.last !== page.first ? ` to ${page.last}` : "") +
    (page.dated < page.count ? ` (${page.count - page.dated} photos undated)` : "") : "no dated photos";
  $("individual-facts").textContent = `${page.species || "species not recorded"} · ` +
    `${page.count} photo${page.count === 1 ? "" : "s"} · ${seen} · orientations: ${orientations}`;
  $("individual-photos").replaceChildren(...page.sightings.map(sighting));
  const others = state.individuals.filter((row) => row.name !== page.name &&
                                                   row.species === page.species);
  $("merge-target").replaceChildren(...others.map((row) =>
    element("option", {value: row.name, textContent: `${row.name} (${row.photos})`})));
  $("merge-form").hidden = !others.length;
  for (const item of document.querySelectorAll("#individuals li"))
    item.classList.toggle("selected", item.dataset.name === page.name);
}

// One photo of an individual's timeline: the photo, what is known of its sighting, and a form
// for the location and notes (saved, and logged, by /api/describe).
function sighting(s) {
  const facts = [s.image_id, s.date || "date unknown", s.orientation, s.source && `file ${s.source}`]
    .filter(Boolean).join(" · ");
  const location = element("input", {value: s.location || "", placeholder: "location",
                                     ariaLabel: `location of ${s.image_id}`, maxLength: 2000});
  const notes = element("textarea", {value: s.notes || "", placeholder: "notes", rows: 2,
                                     ariaLabel: `notes on ${s.image_id}`, maxLength: 2000});
  const save = element("button", {type: "submit", textContent: "Save"});
  const form = element("form", {className: "describe"}, [location, notes, save]);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await post("/api/describe", {image_id: s.image_id, location: location.value,
                                   notes: notes.value});
      say(`saved the location and notes of ${s.image_id}`);
    } catch (e) { fail(e); }
  });
  const picture = element("img", {alt: s.image_id, src: photoUrl(s.image_id), title: s.image_id});
  return element("figure", {className: "sighting", data: {imageId: s.image_id}}, [
    element("a", {href: photoUrl(s.image_id), target: "_blank", rel: "noopener"}, [picture]),
    element("figcaption", {}, [element("div", {className: "facts", textContent: facts}), form])]);
}

// -- the review queue ----------------------------------------------------------------------
async function loadQueue() {
  const waiting = await call(`/api/queries?${query({order: state.order})}`);
  state.queue = waiting.queries; state.reviewed = waiting.reviewed;
  $("meaning").textContent = `scores: ${waiting.score}`;
  const total = state.reviewed + state.queue.length;
  $("progress").textContent = `${state.reviewed} of ${total} reviewed`;
  showRanked(waiting);
}
// How many waiting photos have their candidates ready (ranked ahead by the server); asked
// again every 2 s until all are, without moving the reviewer.
function showRanked(waiting) {
  const left = waiting.queries.length - waiting.ranked;
  $("ranked").textContent = waiting.ranking_error ||
    (left > 0 ? `ranking ahead: ${waiting.ranked} of ${waiting.queries.length} ready` : "");
  clearTimeout(state.polling);
  if (left > 0 && !waiting.ranking_error) {
    state.polling = setTimeout(async () => {
      try {
        const again = await call(`/api/queries?${query({order: state.order})}`);
        showRanked(again);
      } catch (e) { fail(e); }
    }, 2000);
  }
}
function position() { return state.queue.indexOf(state.current); }
async function showPhoto(imageId) {
  $("review").hidden = false; $("individual-page").hidden = true;
  if (!imageId) {
    state.current = null;
    $("current").hidden = true; $("empty").hidden = state.queue.length > 0;
    $("position").textContent = "";
    if (state.queue.length) return showPhoto(state.queue[0]);
    return;
  }
  state.current = imageId;
  $("empty").hidden = true; $("current").hidden = false;
  const index = position();
  $("position").textContent = index >= 0 ? `${index + 1} / ${state.queue.length} waiting` : "";
  $("query").replaceChildren(element("img", {alt: "query", src: photoUrl(imageId)}));
  $("query-id").textContent = imageId;
  $("verdict").textContent = "ranking…";
  $("candidates").replaceChildren(); $("matches").replaceChildren();
  $("new-name").value = "";
  const ranked = await call(`/api/candidates?${query({image_id: imageId})}`);
  if (state.current !== imageId) return;  // moved on meanwhile
  state.candidates = ranked.candidates;
  $("verdict").textContent = ranked.verdict;
  $("candidates").replaceChildren(...ranked.candidates.map(candidate));
}
function candidate(c, index) {
  const confirm = element("button", {className: "confirm", textContent: `Confirm (${index + 1})`,
                                     data: {name: c.identity}});
  confirm.addEventListener("click", () => decide("confirm", c.identity));
  const matches = element("button", {className: "show", textContent: "Matches",
                                     data: {name: c.identity}});
  matches.addEventListener("click", () => showMatches(c.identity, c.image).catch(fail));
  const thumbs = element("div", {className: "thumbs"}, c.photos.map((i) =>
    element("img", {alt: `${c.identity}: ${i}`, src: photoUrl(i), title: i})));
  return element("div", {className: "cand", data: {name: c.identity}}, [
    thumbs, element("div", {className: "title", textContent: `${c.rank}. ${c.identity}`}),
    element("div", {textContent: `score ${c.score} · ${c.count} photo${c.count === 1 ? "" : "s"}`}),
    element("div", {className: "actions"}, [confirm, matches])]);
}
// ``scored``: the candidate's photo that gave its score (stepping to its other photos keeps it).
async function showMatches(name, photo, scored = photo) {
  $("matches").textContent = "matching…";
  // The pair that gave the candidate its score, where the candidates name it.
  const asked = photo ? {image_id: state.current, individual: name, photo: photo}
                      : {image_id: state.current, individual: name};
  const drawn = await call(`/api/matches?${query(asked)}`);
  $("matches").replaceChildren(matchViewer(name, drawn, scored));
}

// Weak matches dark blue, through green and yellow, to red for the strongest (as the report's
// turbo scale): visible on dark fur and pale skin alike.
const confidenceColour = (confidence) => `hsl(${Math.round(240 * (1 - Math.min(1, Math.max(0, confidence))))}, 100%, 50%)`;
const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attributes) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

// The match viewer: the query and the candidate's photo side by side at their own resolution,
// zoomed (wheel, + and -) and panned (drag) together, each match a dot at both ends coloured by
// its confidence and, unless switched off, a line; the candidate's other photos one step away.
function matchViewer(name, drawn, scoredPhoto) {
  const left = element("img", {alt: `query ${state.current}`, src: photoUrl(state.current)});
  const right = element("img", {alt: `${name}: ${drawn.photo}`, src: photoUrl(drawn.photo)});
  const overlay = svg("svg", {class: "overlay"});
  const lines = svg("g", {class: "lines"}), dots = svg("g", {class: "dots"});
  overlay.append(lines, dots);
  const stage = element("div", {className: "stage"},
                        [element("div", {className: "pair"}, [left, right]), overlay]);
  const frame = element("div", {className: "viewer-frame", tabIndex: 0,
                                 ariaLabel: "matched photos: + and - zoom, arrow keys pan",
                                 title: "wheel or +/- to zoom, drag or arrow keys to pan"},
                        [stage]);
  let scale = 1, x = 0, y = 0, dragging = null;
  const apply = () => {
    if (scale <= 1) { scale = 1; x = 0; y = 0; }
    stage.style.transform = `translate(${x}px, ${y}px) scale(${scale})`;
    zoomShown.textContent = `${Math.round(scale * 100)} %`;
  };
  const zoom = (factor, px = frame.clientWidth / 2, py = frame.clientHeight / 2) => {
    const next = Math.min(8, Math.max(1, scale * factor));
    x = px - (px - x) * next / scale; y = py - (py - y) * next / scale; scale = next; apply();
  };
  frame.addEventListener("wheel", (event) => {
    event.preventDefault();
    const box = frame.getBoundingClientRect();
    zoom(event.deltaY < 0 ? 1.25 : 0.8, event.clientX - box.left, event.clientY - box.top);
  }, {passive: false});
  frame.addEventListener("pointerdown", (event) => { dragging = [event.clientX - x, event.clientY - y]; });
  frame.addEventListener("pointermove", (event) => {
    if (dragging && scale > 1) { x = event.clientX - dragging[0]; y = event.clientY - dragging[1]; apply(); }
  });
  for (const end of ["pointerup", "pointerleave"]) frame.addEventListener(end, () => { dragging = null; });
  // The keyboard does what the wheel and the mouse do, while the viewer has the focus (the
  // arrows then pan the photos instead of moving in the queue).
  const steps = {ArrowLeft: [60, 0], ArrowRight: [-60, 0], ArrowUp: [0, 60], ArrowDown: [0, -60]};
  frame.addEventListener("keydown", (event) => {
    if (event.key === "+" || event.key === "=") zoom(1.5);
    else if (event.key === "-") zoom(1 / 1.5);
    else if (steps[event.key]) { x += steps[event.key][0]; y += steps[event.key][1]; apply(); }
    else return;
    event.preventDefault();
    event.stopPropagation();
  });
  const draw = () => {
    const [w1, h1, w2, h2] = [left.clientWidth, left.clientHeight, right.clientWidth, right.clientHeight];
    overlay.setAttribute("viewBox", `0 0 ${w1 + w2} ${Math.max(h1, h2)}`);
    overlay.setAttribute("width", w1 + w2); overlay.setAttribute("height", Math.max(h1, h2));
    lines.replaceChildren(); dots.replaceChildren();
    for (const [qx, qy, cx, cy, confidence] of drawn.pairs) {
      const colour = confidenceColour(confidence);
      const a = [qx * w1, qy * h1], b = [w1 + cx * w2, cy * h2];
      lines.append(svg("line", {x1: a[0], y1: a[1], x2: b[0], y2: b[1], stroke: colour}));
      for (const [px, py] of [a, b]) dots.append(svg("circle", {cx: px, cy: py, r: 4, fill: colour}));
    }
  };
  let loaded = 0;
  for (const picture of [left, right]) {
    picture.addEventListener("load", () => { if (++loaded === 2) draw(); });
  }
  state.redrawMatches = draw;  // one window listener redraws whichever viewer is shown
  const zoomShown = element("span", {className: "zoom-level", textContent: "100 %"});
  const zoomIn = element("button", {textContent: "+", title: "zoom in"});
  const zoomOut = element("button", {textContent: "−", title: "zoom out"});
  zoomIn.addEventListener("click", () => zoom(1.5));
  zoomOut.addEventListener("click", () => zoom(1 / 1.5));
  const showLines = element("input", {type: "checkbox", checked: true, id: "show-lines"});
  showLines.addEventListener("change", () => { lines.style.display = showLines.checked ? "" : "none"; });
  // Step through the candidate's photos: each one matched with the query on request.
  const index = drawn.photos.indexOf(drawn.photo), count = drawn.photos.length;
  const step = (by) => showMatches(name, drawn.photos[(index + by + count) % count],
                                   scoredPhoto).catch(fail);
  const previous = element("button", {textContent: "◀ photo", title: "the candidate's previous photo",
                                      disabled: count < 2});
  const next = element("button", {textContent: "photo ▶", title: "the candidate's next photo",
                                  disabled: count < 2});
  previous.addEventListener("click", () => step(-1));
  next.addEventListener("click", () => step(1));
  const which = !scoredPhoto ? `the best-matching photo of ${name}`
    : drawn.photo === scoredPhoto ? `${drawn.photo}, the photo of ${name} that gave the score`
    : `${drawn.photo}, a photo of ${name}`;
  const controls = element("div", {className: "viewer-controls"}, [
    zoomOut, zoomShown, zoomIn,
    element("label", {}, [showLines, " lines"]),
    previous, element("span", {textContent: `photo ${index + 1} of ${count}`}), next]);
  return element("figure", {className: "viewer"}, [controls, frame, element("figcaption", {
    textContent: `${drawn.matches} keypoint matches (strength ${drawn.strength}) · left: ` +
                 `${state.current} · right: ${which}`})]);
}
async function decide(kind, name) {
  if (!state.current) return;
  const decided = state.current, next = state.queue[position() + 1] || null;
  try {
    const result = kind === "confirm"
      ? await post("/api/confirm", {image_id: decided, individual: name})
      : await post("/api/new", {image_id: decided, name: $("new-name").value});
    say(`${decided} -> ${result.individual}`);
    await refresh(next);
  } catch (e) { fail(e); }
}
async function undo() {
  try {
    const undone = await post("/api/undo", {});
    say(undone.kind === "merge" ? `undone: the merge into ${undone.individual}`
        : undone.kind === "group" ? `undone: the new individual ${undone.individual} (a group)`
        : `undone: ${undone.image_id} -> ${undone.individual}`);
    await refresh(undone.kind === "merge" ? state.current : undone.image_id);
  } catch (e) { fail(e); }
}
async function refresh(show) {
  await loadIndividuals(); await loadQueue();
  if (location.hash.startsWith("#individual=")) return route();
  await showPhoto(show && (state.queue.includes(show) || !state.queue.length) ? show : state.queue[0]);
}
function move(step) {
  const index = position();
  const target = state.queue[Math.min(Math.max(index + step, 0), state.queue.length - 1)];
  if (target && target !== state.current) showPhoto(target).catch(fail);
}

// -- proposed new individuals ---------------------------------------------------------------
async function loadGroups() {
  $("groups").textContent = "grouping the waiting photos…";
  const found = await call("/api/groups");
  if (!found.groups.length) {
    $("groups").textContent = "No waiting photos look like one new individual together.";
    return;
  }
  const groups = found.groups.map((g, number) => group(g, number, found.groups.length));
  $("groups").replaceChildren(...groups);
}
// A group is a proposal, not a verdict: each photo can be left out (its box) or moved to
// another proposed group (its "move to" list) before a group is accepted.
function group(g, number, count) {
  const name = element("input", {className: "group-name", placeholder: "name (optional)",
                                 maxLength: 200, ariaLabel: `name of new individual ${number + 1}`});
  const accept = element("button", {className: "accept-group"});
  const thumbs = element("div", {className: "thumbs"}, g.photos.map((i) => member(i, number, count)));
  const title = element("div", {className: "title"});
  const box = element("div", {className: "group", data: {group: number}},
                      [title, thumbs, element("div", {className: "actions"}, [name, accept])]);
  box.kept = () => [...thumbs.querySelectorAll("input[type=checkbox]:checked")].map((b) => b.value);
  box.counted = () => {
    const photos = thumbs.querySelectorAll(".member").length, kept = box.kept().length;
    title.textContent = `${number + 1}. ${g.species || "species not recorded"}: ` +
                        `${photos} photos that look like one unseen animal`;
    accept.textContent = `Accept as one new individual (${kept} photos)`;
    accept.disabled = !kept;
  };
  thumbs.addEventListener("change", (event) => {
    if (event.target.type === "checkbox") box.counted();
  });
  accept.addEventListener("click", async () => {
    try {
      const made = await post("/api/new-group", {image_id: box.kept(), name: name.value});
      say(`${made.image_ids.length} photos -> ${made.individual}`);
      await refresh(null);
      await loadGroups();
    } catch (e) { fail(e); }
  });
  box.counted();
  return box;
}
function member(imageId, number, count) {
  const keep = element("input", {type: "checkbox", checked: true, value: imageId,
                                 ariaLabel: `keep ${imageId} in the group`});
  const options = [element("option", {value: "", textContent: "move to…"})];
  for (let other = 0; other < count; other++) {  // every group but the one the photo is in
    options.push(element("option", {value: other, textContent: `group ${other + 1}`,
                                    hidden: other === number}));
  }
  const moveTo = element("select", {className: "move-to", ariaLabel: `move ${imageId} to another group`},
                         options);
  const label = element("label", {className: "member", title: imageId}, [
    element("img", {alt: imageId, src: photoUrl(imageId)}), keep, element("span", {textContent: imageId})]);
  const wrapper = element("div", {className: "member-box"}, [label, count > 1 ? moveTo : ""]);
  moveTo.addEventListener("change", () => {
    const from = wrapper.closest(".group");
    const to = document.querySelector(`.group[data-group="${moveTo.value}"]`);
    if (!to || to === from) return;
    to.querySelector(".thumbs").append(wrapper);
    for (const option of moveTo.options) option.hidden = option.value === to.dataset.group;
    moveTo.value = "";
    from.counted();
    to.counted();
  });
  return wrapper;
}

// -- routing and keys ----------------------------------------------------------------------
async function route() {
  const hash = decodeURIComponent(location.hash.slice(1));
  try {
    if (hash.startsWith("individual=")) await showIndividual(hash.slice("individual=".length));
    else if (hash.startsWith("photo=")) await showPhoto(hash.slice("photo=".length));
    else await showPhoto(state.current && state.queue.includes(state.current)
                         ? state.current : state.queue[0]);
  } catch (e) { fail(e); }
}
document.addEventListener("keydown", (event) => {
  if (event.target.closest("input, select, textarea") || event.ctrlKey || event.metaKey ||
      event.altKey) return;
  if ($("review").hidden) {  // an individual's page: only undo applies
    if (event.key === "u" || event.key === "U") { undo(); event.preventDefault(); }
    return;
  }
  const number = Number(event.key);
  if (number >= 1 && number <= 5 && state.candidates[number - 1] && state.current) {
    decide("confirm", state.candidates[number - 1].identity);
  } else if (event.key === "n" || event.key === "N") {
    decide("new");
  } else if (event.key === "u" || event.key === "U") {
    undo();
  } else if (event.key === "ArrowRight") {
    move(1);
  } else if (event.key === "ArrowLeft") {
    move(-1);
  } else {
    return;
  }
  event.preventDefault();
});

document.addEventListener("DOMContentLoaded", async () => {
  $("upload").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!$("file").files.length) { $("error").textContent = "choose a photo first"; return; }
    const form = new FormData();
    form.append("photo", $("file").files[0]);
    form.append("species", $("species").value);
    try {
      const result = await call("/api/queries", {method: "POST", body: form});
      await loadQueue();
      location.hash = "";
      await showPhoto(result.image_id);
    } catch (e) { fail(e); }
  });
  $("new").addEventListener("click", () => decide("new"));
  $("find-groups").addEventListener("click", () => loadGroups().catch(fail));
  $("undo").addEventListener("click", undo);
  $("next").addEventListener("click", () => move(1));
  $("previous").addEventListener("click", () => move(-1));
  $("order").addEventListener("change", async () => {
    state.order = $("order").value;
    try { await loadQueue(); await showPhoto(state.queue[0]); } catch (e) { fail(e); }
  });
  $("home").addEventListener("click", () => { location.hash = ""; });
  $("filter").addEventListener("input", () => loadIndividuals().catch(fail));
  $("merge-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const source = $("individual-name").textContent, target = $("merge-target").value;
    try {
      const merged = await post("/api/merge", {source, target});
      say(`merged ${merged.source} into ${merged.target} (${merged.moved} photos)`);
      location.hash = `individual=${encodeURIComponent(target)}`;
      await loadIndividuals();
    } catch (e) { fail(e); }
  });
  window.addEventListener("hashchange", route);
  window.addEventListener("resize", () => state.redrawMatches && state.redrawMatches());
  try { await loadIndividuals(); await loadQueue(); } catch (e) { fail(e); }
  await route();
});
