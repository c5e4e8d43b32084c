// The trial table's sort and filter: plain DOM, no library. Sort and filter survive the live
// page's reloads through sessionStorage (kept per page path).
(function () {
  "use strict";
  var table = document.getElementById("trial-table");
  if (!table) return;
  var tbody = table.tBodies[0];
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var rows = Array.prototype.slice.call(tbody.rows);
  var filter = document.getElementById("filter");
  var shown = document.getElementById("shown");
  var store = "dyntrain-report:" + location.pathname;
  var saved = {};
  try { saved = JSON.parse(sessionStorage.getItem(store) || "{}"); } catch (e) { saved = {}; }

  function save(patch) {
    for (var k in patch) saved[k] = patch[k];
    try { sessionStorage.setItem(store, JSON.stringify(saved)); } catch (e) { /* storage may be off: no matter */ }
  }

  // A cell's sort key: data-sort (the raw number or value) if present, else its text; "—" (missing) sorts last.
  function key(row, col, numeric) {
    var cell = row.cells[col];
    var raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : null;
    if (raw === null) return null;
    if (numeric) { var x = parseFloat(raw); return isNaN(x) ? null : x; }
    return raw.toLowerCase();
  }

  function sortBy(col, descending) {
    var numeric = heads[col].getAttribute("data-type") === "num";
    var order = rows.map(function (row, i) { return [key(row, col, numeric), i, row]; });
    order.sort(function (a, b) {
      if (a[0] === null || b[0] === null) return (a[0] === null) - (b[0] === null) || a[1] - b[1];
      var c = a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0;
      return (descending ? -c : c) || a[1] - b[1];  // stable: ties keep the page's order
    });
    order.forEach(function (o) { tbody.appendChild(o[2]); });
    heads.forEach(function (h, i) {
      if (i === col) h.setAttribute("aria-sort", descending ? "descending" : "ascending");
      else h.removeAttribute("aria-sort");
    });
    save({ sort: heads[col].getAttribute("data-col"), descending: descending });
  }

  // Filter: every whitespace-separated word must occur (case-insensitive) in the row's text.
  function applyFilter() {
    var words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    var n = 0;
    rows.forEach(function (row) {
      var text = row.textContent.toLowerCase() + " " + (row.getAttribute("data-run") || "").toLowerCase();
      var keep = words.every(function (w) { return text.indexOf(w) >= 0; });
      row.hidden = !keep;
      if (keep) n += 1;
    });
    shown.textContent = n + " of " + rows.length + " trials";
    save({ filter: filter.value });
  }

  heads.forEach(function (h, i) {
    h.querySelector("button").addEventListener("click", function () {
      sortBy(i, h.getAttribute("aria-sort") === "ascending");
    });
  });
  filter.addEventListener("input", applyFilter);

  if (saved.filter) filter.value = saved.filter;
  var col = heads.map(function (h) { return h.getAttribute("data-col"); }).indexOf(saved.sort);
  if (col >= 0) sortBy(col, !!saved.descending);
  applyFilter();
})();
