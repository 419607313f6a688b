// The review page. Every element is built with the DOM and every user-given text (names, image
// ids, error messages) is set as textContent or an attribute, never as HTML: a name such as
// <img onerror=...> shows as text. The Content-Security-Policy forbids inline script besides.
"use strict";
const $ = (id) => document.getElementById(id);
let current = null;

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
function fail(error) { $("error").textContent = error.message; }

async function loadIndividuals() {
  const list = await call("/api/individuals");
  $("individuals").replaceChildren(...list.map((row) => {
    const item = element("li", {textContent: `${row.name} (${row.photos})`,
                                data: {name: row.name}});
    item.addEventListener("click", () => browse(row.name).catch(fail));
    return item;
  }));
}
async function loadWaiting() {
  const waiting = await call("/api/queries");
  $("meaning").textContent = `scores: ${waiting.score}`;
  $("waiting").replaceChildren(...waiting.queries.map((imageId) => {
    const image = element("img", {className: "pick", alt: imageId, height: 60,
                                  src: photoUrl(imageId), data: {id: imageId}});
    image.addEventListener("click", async () => {
      try { show(imageId, await call(`/api/candidates?${query({image_id: imageId})}`)); }
      catch (e) { fail(e); }
    });
    return image;
  }));
}
async function browse(name) {
  const ids = await call(`/api/photos?${query({individual: name})}`);
  $("browse-title").textContent = name;
  $("browse").replaceChildren(...ids.map((i) => element("img", {alt: i, src: photoUrl(i)})));
}
function decide(url, fields) {
  const form = new FormData();
  for (const [key, value] of Object.entries(fields)) form.append(key, value);
  return call(url, {method: "POST", body: form}).then(async (result) => {
    $("status").textContent = `${current} -> ${result.individual}`;
    $("candidates").replaceChildren(); $("matches").replaceChildren();
    $("decide-new").hidden = true;
    await loadIndividuals(); await loadWaiting();
  }).catch(fail);
}
function candidate(c) {
  const confirm = element("button", {className: "confirm", textContent: "Confirm",
                                     data: {name: c.identity}});
  confirm.addEventListener("click", () =>
    decide("/api/confirm", {image_id: current, individual: c.identity}));
  const matches = element("button", {className: "show", textContent: "Matches",
                                     data: {name: c.identity}});
  matches.addEventListener("click", async () => {
    $("matches").textContent = "matching...";
    try {
      const drawn = await call(`/api/matches?${query({image_id: current, individual: c.identity})}`);
      $("matches").replaceChildren(element("img", {alt: `matches ${c.identity}`, src: drawn.image}));
    } catch (e) { $("matches").textContent = ""; fail(e); }
  });
  return element("div", {className: "cand"}, [
    element("img", {alt: c.identity, src: photoUrl(c.photo)}), element("br"),
    `${c.rank}. ${c.identity} (${c.score})`, element("br"), confirm, " ", matches]);
}
function show(imageId, candidates) {
  current = imageId;
  $("status").textContent = ""; $("error").textContent = "";
  $("query").replaceChildren(element("img", {alt: "query", height: 160, src: photoUrl(imageId)}));
  $("candidates").replaceChildren(...candidates.map(candidate));
  $("matches").replaceChildren();
  $("new-name").value = "";
  $("decide-new").hidden = false;
}

document.addEventListener("DOMContentLoaded", () => {
  $("upload").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("error").textContent = ""; $("status").textContent = "";
    if (!$("file").files.length) { $("error").textContent = "choose a photo first"; return; }
    const form = new FormData();
    form.append("photo", $("file").files[0]);
    form.append("species", $("species").value);
    try {
      const result = await call("/api/queries", {method: "POST", body: form});
      show(result.image_id, result.candidates);
      await loadWaiting();
    } catch (e) { fail(e); }
  });
  $("new").addEventListener("click", () =>
    decide("/api/new", {image_id: current, name: $("new-name").value}));
  loadIndividuals().catch(fail); loadWaiting().catch(fail);
});
