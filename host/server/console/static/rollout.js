// A rollout's page, kept current: /console/live?rollout=ID sends the rollout's state, its counts
// by device state and every device's row whenever one changes. Without script the page shows
// what it had when it was loaded.
(function () {
  "use strict";
  var root = document.querySelector("[data-rollout]");
  if (!root || !window.qlink) return;
  var id = root.getAttribute("data-rollout");
  var stateBadge = root.querySelector("[data-rollout-state]");
  var body = root.querySelector("[data-rollout-devices]");
  var note = root.querySelector("[data-live-status]");
  var initialState = stateBadge ? stateBadge.textContent : "";

  function badge(el, state) {
    el.textContent = state;
    el.className = "badge badge-" + state;
  }

  function row(d) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-device", d.id);
    var cell = document.createElement("td");
    cell.className = "mono";
    var a = document.createElement("a");
    a.href = "/console/devices/" + encodeURIComponent(d.id);
    a.textContent = d.id.slice(0, 12) + "\u2026";  // as the page shows IDs (web.short_id)
    a.title = d.id;
    cell.appendChild(a);
    tr.appendChild(cell);
    var st = document.createElement("td");
    var span = document.createElement("span");
    span.setAttribute("data-field", "state");
    st.appendChild(span);
    tr.appendChild(st);
    var reason = document.createElement("td");
    reason.setAttribute("data-field", "reason");
    tr.appendChild(reason);
    var updated = document.createElement("td");
    updated.setAttribute("data-field", "updated");
    updated.textContent = "now";
    tr.appendChild(updated);
    return tr;
  }

  function update(ev) {
    if (String(ev.id) !== id) return;
    if (stateBadge && ev.state) {
      badge(stateBadge, ev.state);
      if (note && ev.state !== initialState) {
        note.textContent = "The rollout is now " + ev.state + "; reload the page for its actions.";
      }
    }
    Object.keys(ev.counts || {}).forEach(function (s) {
      var el = root.querySelector('[data-count="' + s + '"]');
      if (el) el.textContent = ev.counts[s];
    });
    if (!body) return;
    (ev.devices || []).forEach(function (d) {
      var tr = body.querySelector('tr[data-device="' + d.id + '"]');
      if (!tr) {
        var empty = body.querySelector("tr.empty");
        if (empty) empty.remove();
        tr = row(d);
        body.appendChild(tr);
      }
      var state = tr.querySelector('[data-field="state"]');
      if (state && state.textContent !== d.state) {
        badge(state, d.state);
        var when = tr.querySelector('[data-field="updated"]');
        if (when) when.textContent = "now";
      }
      var reason = tr.querySelector('[data-field="reason"]');
      if (reason) reason.textContent = d.reason || "-";
    });
  }

  window.qlink.live("rollout=" + encodeURIComponent(id), { rollout: update });
})();
