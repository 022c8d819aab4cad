// The dashboard's live counts (docs/console.md "Live updates"): it follows the tenant's
// `summary` events ({total, by_state, online, disabled}, at most one every 2 s) and writes each
// count into its card. Without this script the page shows the counts it was rendered with.
(function () {
  "use strict";
  var cards = document.querySelector('[data-live="summary"]');
  if (!cards || !window.qlink || !window.qlink.live) return;

  function put(name, value) {
    if (typeof value !== "number") return;
    var node = cards.querySelector('[data-count="' + name + '"]');
    if (node && node.textContent !== String(value)) node.textContent = String(value);
  }

  window.qlink.live("", {
    summary: function (s) {
      put("total", s.total);
      put("online", s.online);
      put("disabled", s.disabled);
      var states = s.by_state || {};
      Object.keys(states).forEach(function (state) { put(state, states[state]); });
    }
  });
})();
