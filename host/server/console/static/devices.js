// The device pages' live updates (docs/console.md "Live updates"). The list follows the
// tenant's `device` events; a device's page follows /console/live?device=ID and also appends
// each new telemetry message to its chart and table. Without this script both pages still show
// what the server rendered.
(function () {
  "use strict";

  function utc(t) {
    if (t === null || t === undefined) return "-";
    return new Date(t * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  // A chart axis's time, as the server draws it (web.axis_time): the axis title says UTC,
  // and the far end gives only the clock when both ends are the same day.
  function axisTime(t, since) {
    var s = utc(t).replace(" UTC", "");
    if (since !== undefined && utc(since).slice(0, 10) === s.slice(0, 10)) return s.slice(11);
    return s;
  }

  function badge(cls, text) {
    var span = document.createElement("span");
    span.className = "badge badge-" + cls;
    span.textContent = text;
    return span;
  }

  function setField(scope, name, nodes) {
    var cell = scope.querySelector('[data-field="' + name + '"]');
    if (!cell) return;
    cell.textContent = "";
    nodes.forEach(function (n, i) {
      if (i > 0) cell.appendChild(document.createTextNode(" "));
      cell.appendChild(typeof n === "string" ? document.createTextNode(n) : n);
    });
  }

  function update(scope, d, withDisabled) {
    var state = [badge(d.state, d.state)];
    if (d.disabled && !withDisabled) state.push(badge("disabled", "disabled"));
    setField(scope, "state", state);
    if (withDisabled) setField(scope, "disabled", [d.disabled ? badge("disabled", "disabled") : "no"]);
    setField(scope, "online", [d.online ? badge("online", "online") : badge("offline", "offline")]);
    setField(scope, "fw", [d.fw || "-"]);
    setField(scope, "last_seen", [utc(d.last_seen)]);
  }

  // `resync`: the stream could not send every change (docs/console.md "Live updates").
  function open(query, handler, resync) {
    if (window.qlink && window.qlink.live) {
      return window.qlink.live(query, { device: handler, resync: resync });
    }
    if (!window.EventSource) return null;
    var source = new EventSource("/console/live" + (query ? "?" + query : ""));
    source.addEventListener("device", function (ev) {
      try { handler(JSON.parse(ev.data)); } catch (e) { /* a bad event is skipped */ }
    });
    return source;
  }

  // -- the list ------------------------------------------------------------------------------
  var list = document.querySelector('table[data-live="devices"]');
  if (list) {
    open("", function (d) {
      var rows = list.querySelectorAll("tr[data-device]");
      for (var i = 0; i < rows.length; i++) {
        if (rows[i].getAttribute("data-device") === d.id) update(rows[i], d, false);
      }
    }, function () {
      window.qlink.refreshFields('table[data-live="devices"] tr[data-device]', "data-device");
    });
    return;
  }

  // -- one device ------------------------------------------------------------------------------
  var page = document.querySelector("[data-device-page]");
  if (!page) return;
  var id = page.getAttribute("data-device-page");
  var svg = document.querySelector('svg[data-chart="telemetry"]');
  var table = document.querySelector('table[data-table="telemetry"] tbody');
  var points = [];
  try { points = JSON.parse(svg ? svg.getAttribute("data-points") || "[]" : "[]"); } catch (e) { points = []; }
  var lastSeq = null;
  var MAX_POINTS = 64; // the store keeps the last 64 messages

  function text(axis, value) {
    var node = svg.querySelector('[data-axis="' + axis + '"]');
    if (node) node.textContent = value;
  }

  function redraw() {
    if (!svg || points.length === 0) return;
    var box = svg.viewBox.baseVal;
    var left = 72, right = box.width - 16, top = 16, bottom = box.height - 44;
    var ts = points.map(function (p) { return p[0]; });
    var vs = points.map(function (p) { return p[1]; });
    var tMin = Math.min.apply(null, ts), tMax = Math.max.apply(null, ts);
    var vMin = Math.min.apply(null, vs), vMax = Math.max.apply(null, vs);
    function sx(t) { return tMax === tMin ? (left + right) / 2 : left + (t - tMin) * (right - left) / (tMax - tMin); }
    function sy(v) { return vMax === vMin ? (top + bottom) / 2 : bottom - (v - vMin) * (bottom - top) / (vMax - vMin); }
    var line = points.map(function (p) { return sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1); }).join(" ");
    svg.querySelector('[data-line="telemetry"]').setAttribute("points", line);
    var dots = svg.querySelector('[data-dots="telemetry"]');
    while (dots.firstChild) dots.removeChild(dots.firstChild);
    points.forEach(function (p) {
      var c = document.createElementNS("http://www.w3.org/2000/svg", "circle");
      c.setAttribute("cx", sx(p[0]).toFixed(1));
      c.setAttribute("cy", sy(p[1]).toFixed(1));
      c.setAttribute("r", "3");
      dots.appendChild(c);
    });
    text("y-max", String(Math.round(vMax)));
    text("y-min", String(Math.round(vMin)));
    text("t-min", axisTime(tMin));
    text("t-max", axisTime(tMax, tMin));
  }

  function appendTelemetry(d) {
    var t = d.telemetry;
    if (!t || typeof t !== "object") return;
    if (t.seq !== undefined && t.seq === lastSeq) return; // the same message, another change
    lastSeq = t.seq;
    var at = d.last_seen || Date.now() / 1000;
    if (svg) {
      var series = svg.getAttribute("data-series");
      var v = t[series];
      if (typeof v === "number") {
        points.push([at, v]);
        if (points.length > MAX_POINTS) points.shift();
        redraw();
      }
    }
    if (table) {
      var tr = document.createElement("tr");
      [utc(at), t.seq, t.uptime_ms, t.mem_free, t.fw].forEach(function (value, i) {
        var td = document.createElement("td");
        if (i > 0 && i < 4) td.className = "num";
        td.textContent = value === undefined || value === null ? "-" : String(value);
        tr.appendChild(td);
      });
      table.appendChild(tr);
      while (table.rows.length > MAX_POINTS) table.deleteRow(0);
    }
  }

  // After a resync: the facts, and the telemetry the store kept, as the server renders them now.
  function resync() {
    window.qlink.refreshFields("[data-device-page]", "data-device-page", function (fresh) {
      var freshSvg = fresh.querySelector('svg[data-chart="telemetry"]');
      if (svg && freshSvg) {
        try { points = JSON.parse(freshSvg.getAttribute("data-points") || "[]"); } catch (e) { return; }
        redraw();
      }
      var freshRows = fresh.querySelector('table[data-table="telemetry"] tbody');
      if (table && freshRows) {
        table.textContent = "";
        freshRows.childNodes.forEach(function (n) { table.appendChild(document.importNode(n, true)); });
        var last = table.rows[table.rows.length - 1];  // its seq: the next frame may repeat it
        if (last && last.cells.length > 1) lastSeq = Number(last.cells[1].textContent);
      }
    });
  }

  open("device=" + encodeURIComponent(id), function (d) {
    if (d.id !== id) return;
    update(page, d, true);
    appendTelemetry(d);
  }, resync);
})();
