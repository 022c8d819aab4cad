// The console's one script: no build step, no inline handlers (the CSP forbids them). Every page
// works without it. It sends the session's CSRF token (from <meta name="csrf">) on every fetch
// POST, and offers window.qlink.post/live to the pages that use them.
(function () {
  "use strict";
  var meta = document.querySelector('meta[name="csrf"]');
  var csrf = meta ? meta.getAttribute("content") : "";

  // Every fetch POST (and other changing methods) carries X-CSRF-Token.
  var plainFetch = window.fetch.bind(window);
  window.fetch = function (input, init) {
    init = init || {};
    var method = (init.method || "GET").toUpperCase();
    if (method !== "GET" && method !== "HEAD") {
      var headers = new Headers(init.headers || {});
      if (!headers.has("X-CSRF-Token")) headers.set("X-CSRF-Token", csrf);
      init.headers = headers;
      init.credentials = "same-origin";
    }
    return plainFetch(input, init);
  };

  // Forms marked data-confirm="sentence" ask before they are sent.
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var sentence = form.getAttribute && form.getAttribute("data-confirm");
    if (sentence && !window.confirm(sentence)) ev.preventDefault();
  });

  // Live updates: qlink.live(query, {event: handler}) opens /console/live?query. The `resync`
  // handler also runs when the stream opens again after a break: changes made while it was
  // away were never sent, so the page reads what it shows again.
  function live(query, handlers) {
    if (!window.EventSource) return null;
    var source = new EventSource("/console/live" + (query ? "?" + query : ""));
    Object.keys(handlers).forEach(function (name) {
      source.addEventListener(name, function (ev) {
        // A bad event is skipped, the stream goes on; the error is logged, where the browser
        // tests see it.
        try { handlers[name](JSON.parse(ev.data)); } catch (e) { console.error("live " + name, e); }
      });
    });
    var opened = false;
    source.addEventListener("open", function () {
      if (opened && handlers.resync) handlers.resync({});
      opened = true;
    });
    return source;
  }

  // The page's own URL read again, and each `data-field` inside the elements `selector` picks
  // replaced by the same field of the fresh element with the same `key` attribute: no
  // navigation, so the scroll position and whatever the user typed stay. `after(fresh)`, when
  // given, takes what else it needs from the fresh document.
  function refreshFields(selector, key, after) {
    if (!window.fetch || !window.DOMParser) return;
    window.fetch(window.location.href, { headers: { Accept: "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll(selector).forEach(function (scope) {
          var from = fresh.querySelector(selector + "[" + key + '="' + scope.getAttribute(key) + '"]');
          if (!from) return;
          scope.querySelectorAll("[data-field]").forEach(function (cell) {
            var src = from.querySelector('[data-field="' + cell.getAttribute("data-field") + '"]');
            if (!src) return;
            cell.textContent = "";
            src.childNodes.forEach(function (n) { cell.appendChild(document.importNode(n, true)); });
          });
        });
        if (after) after(fresh);
      })
      .catch(function (e) { console.warn("refresh", e); }); // the next resync tries again
  }

  window.qlink = {
    csrf: csrf,
    live: live,
    refreshFields: refreshFields,
    post: function (url, body) {
      return window.fetch(url, { method: "POST", body: body });
    }
  };
})();
