// The batch page's import form with script: the file is sent with fetch and the answer read as
// it streams (one JSON line per progress step, then the result), shown in the <progress> bar.
// Without this script the form posts and the server answers the result page.
(function () {
  "use strict";
  var form = document.querySelector("form[data-import]");
  if (!form || !window.fetch || !window.TextDecoder) return;
  var bar = form.querySelector(".import-progress");
  var status = form.querySelector(".import-status");
  var list = form.querySelector(".import-rows");
  var input = form.querySelector('input[type="file"]');
  var button = form.querySelector('button[type="submit"]');

  function say(text, bad) {
    status.textContent = text;
    status.className = "import-status " + (bad ? "flash flash-error" : "flash flash-ok");
  }

  function showRows(rows) {
    list.textContent = "";
    rows.forEach(function (r) {
      var li = document.createElement("li");
      li.textContent = "line " + r.line + ": " + r.reason;
      list.appendChild(li);
    });
  }

  function handle(doc) {
    if (typeof doc.done === "number") {
      bar.max = doc.total || 1;
      bar.value = doc.done;
      status.className = "import-status";
      status.textContent = "Checked " + doc.done + " of " + doc.total + " lines";
    } else if (doc.result) {
      bar.value = bar.max;
      say(doc.result.imported + " device(s) imported. Reload the page to see the counts.", false);
    } else if (doc.error) {
      say(doc.error, true);
      showRows(doc.rows || []);
    }
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var file = input.files && input.files[0];
    var max = parseInt(input.getAttribute("data-max-bytes") || "0", 10);
    list.textContent = "";
    if (file && max && file.size > max) {
      say("The file is " + file.size + " bytes; the server accepts at most " + max +
          " bytes in one upload. Split it into smaller files; nothing was imported.", true);
      return;
    }
    bar.hidden = false;
    bar.removeAttribute("value");
    say("Uploading…", false);
    status.className = "import-status";
    button.disabled = true;
    fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      headers: { "Accept": "application/x-ndjson" }
    }).then(function (resp) {
      var type = resp.headers.get("Content-Type") || "";
      if (type.indexOf("application/x-ndjson") !== 0) {
        return resp.text().then(function (text) {
          var sentence = "The server refused the upload (HTTP " + resp.status + ").";
          try { sentence = JSON.parse(text).detail || sentence; } catch (e) { /* not JSON */ }
          say(sentence + " Nothing was imported.", true);
        });
      }
      var reader = resp.body.getReader();
      var decoder = new TextDecoder();
      var buffered = "";
      function pump() {
        return reader.read().then(function (chunk) {
          if (chunk.done) {
            if (buffered.trim()) handle(JSON.parse(buffered));
            return;
          }
          buffered += decoder.decode(chunk.value, { stream: true });
          var lines = buffered.split("\n");
          buffered = lines.pop();
          lines.forEach(function (line) { if (line.trim()) handle(JSON.parse(line)); });
          return pump();
        });
      }
      return pump();
    }).catch(function () {
      say("The upload did not complete (connection lost). Check the batch before retrying.", true);
    }).then(function () {
      button.disabled = false;
    });
  });
})();
