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

  // Live updates: qlink.live(query, {event: handler}) opens /console/live?query.
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
    return source;
  }

  window.qlink = {
    csrf: csrf,
    live: live,
    post: function (url, body) {
      return window.fetch(url, { method: "POST", body: body });
    }
  };
})();
