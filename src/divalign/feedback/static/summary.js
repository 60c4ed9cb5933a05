// The summary page: every value is put on the page with textContent, never as HTML.
"use strict";

const fmt = (x, digits = 3) => (x === null || x === undefined || Number.isNaN(x) ? "–" : x.toFixed(digits));
const interval = (pair) => `${fmt(pair[0])} – ${fmt(pair[1])}`;

function row(table, cells) {
  const tr = document.querySelector(`#${table} tbody`).insertRow();
  for (const value of cells) tr.insertCell().textContent = String(value);
}

async function main() {
  const response = await fetch("/api/summary");
  const s = await response.json();
  document.getElementById("overview").textContent =
    `${s.pairs} pairs in this session, ${s.labels} labels in the file.`;
  for (const [name, r] of Object.entries(s.raters)) {
    row("raters", [name, r.source, r.labelled, r.choices.a, r.choices.b, r.choices.tie, r.choices.both_bad]);
  }
  for (const a of s.agreement) {
    row("agreement", [a.raters.join(" / "), a.shared_pairs, fmt(a.agreement), fmt(a.kappa)]);
  }
  for (const [name, b] of Object.entries(s.position_bias)) {
    if ("left_share" in b) {
      row("position", [name, "left share", fmt(b.left_share), interval(b.left_share_ci95), b.decisive]);
    } else {
      row("position", [name, "order changed verdict", fmt(b.order_disagreement), "", b.pairs]);
      row("position", [name, "first-position share", fmt(b.first_position_share), "", 2 * b.pairs]);
    }
  }
  for (const w of s.win_rates) {
    row("winrate", [w.model_a, w.model_b, w.raters, fmt(w.win_rate), interval(w.win_rate_ci95), w.wins, w.ties,
                    w.losses]);
  }
}

main().catch((error) => { document.getElementById("status").textContent = error.message; });
