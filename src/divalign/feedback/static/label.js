// The labelling page. Every text from the server is put on the page with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let annotator = "";
let current = null;
let busy = false;

function show(state) {
  $("progress").textContent = `${state.done} / ${state.total} labelled`;
  current = state.pair;
  $("task").hidden = current === null;
  $("finished").hidden = current !== null;
  if (current === null) return;
  const prompt = current.prompt;
  $("prompt").textContent = Array.isArray(prompt)
    ? prompt.map((m) => `${m.role}: ${m.content}`).join("\n\n")
    : prompt;
  $("left").textContent = current.left;
  $("right").textContent = current.right;
  $("comment").value = "";
}

async function call(url, options) {
  const response = await fetch(url, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

async function load() {
  $("status").textContent = "";
  try {
    show(await call(`/api/next?annotator=${encodeURIComponent(annotator)}`));
  } catch (error) {
    $("status").textContent = error.message;
  }
}

async function choose(side) {
  if (busy || current === null || !annotator) return;
  busy = true;
  try {
    show(await call("/api/label", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({annotator, pair_id: current.id, side, comment: $("comment").value}),
    }));
    $("status").textContent = "";
  } catch (error) {
    $("status").textContent = `Not saved: ${error.message}`;
  } finally {
    busy = false;
  }
}

const KEYS = {"1": "left", "ArrowLeft": "left", "2": "right", "ArrowRight": "right", "0": "tie",
              "ArrowDown": "tie", "3": "both_bad", "ArrowUp": "both_bad"};

document.addEventListener("keydown", (event) => {
  const typing = ["INPUT", "TEXTAREA"].includes(event.target.tagName);
  if (typing || event.altKey || event.ctrlKey || event.metaKey || !(event.key in KEYS)) return;
  event.preventDefault();
  choose(KEYS[event.key]);
});

for (const [id, side] of [["choose-left", "left"], ["choose-right", "right"], ["choose-tie", "tie"],
                          ["choose-both-bad", "both_bad"]]) {
  $(id).addEventListener("click", () => choose(side));
}

$("who").addEventListener("submit", (event) => {
  event.preventDefault();
  annotator = $("annotator").value.trim();
  if (!annotator) return;
  localStorage.setItem("divalign-annotator", annotator);
  $("annotator").blur();
  load();
});

const given = new URLSearchParams(location.search).get("annotator") || localStorage.getItem("divalign-annotator");
if (given) {
  $("annotator").value = given;
  annotator = given.trim();
  load();
} else {
  $("status").textContent = "Enter your name to start.";
}
