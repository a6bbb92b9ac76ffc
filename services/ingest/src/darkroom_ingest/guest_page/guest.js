// The guest upload page: tus-js-client (vendored from npm by the Makefile) does the uploading,
// resuming and retrying; this file only wires the page to it. The token comes in the URL's
// fragment (#drk_...), which the browser never sends to a server.
(function () {
  "use strict";
  var token = decodeURIComponent(location.hash.replace(/^#/, ""));
  var api = (window.DARKROOM_API || location.origin).replace(/\/$/, "");
  var status = document.getElementById("status");
  var drop = document.getElementById("drop");
  var picker = document.getElementById("picker");
  var list = document.getElementById("files");
  var eventId = null;

  function say(text, cls) { status.textContent = text; status.className = cls || ""; }

  // What went wrong, in words: the server's problem+json detail when there is one.
  function reason(err) {
    var res = err && err.originalResponse;
    if (res) {
      try {
        var body = JSON.parse(res.getBody() || "{}");
        if (body.detail || body.title) return (body.title || "") + (body.detail ? ": " + body.detail : "");
      } catch (e) { /* not JSON */ }
      return "the server answered " + res.getStatus();
    }
    return "the connection failed (" + (err && err.message ? err.message.split("\n")[0] : err) + ")";
  }

  function row(file) {
    var el = document.createElement("div");
    el.className = "file";
    el.innerHTML = '<div class="name"></div><div class="bar"><div></div></div><div class="note"></div>';
    el.querySelector(".name").textContent = file.name;
    list.appendChild(el);
    return {
      progress: function (sent, total) {
        el.querySelector(".bar > div").style.width = (total ? (100 * sent) / total : 0) + "%";
        el.querySelector(".note").textContent = Math.round(sent / 1048576 * 10) / 10 + " of " + Math.round(total / 1048576 * 10) / 10 + " MB";
      },
      done: function () { el.querySelector(".note").textContent = "Uploaded"; el.classList.add("done"); el.dataset.state = "done"; },
      fail: function (why) { el.querySelector(".note").textContent = "Not uploaded: " + why; el.classList.add("error"); el.dataset.state = "error"; },
    };
  }

  function send(file) {
    var r = row(file);
    var upload = new tus.Upload(file, {
      endpoint: api + "/v1/tus/",
      headers: { Authorization: "Bearer " + token },
      metadata: { event: eventId, filename: file.name, filetype: file.type },
      chunkSize: 8 * 1024 * 1024,
      retryDelays: [0, 1000, 3000, 5000, 10000],
      // Resume after a reload: the upload's URL is kept in localStorage by its fingerprint.
      storeFingerprintForResuming: true,
      removeFingerprintOnSuccess: true,
      onProgress: function (sent, total) { r.progress(sent, total); },
      onSuccess: function () { r.done(); },
      onError: function (err) { r.fail(reason(err)); },
    });
    upload.findPreviousUploads().then(function (previous) {
      if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
      upload.start();
    });
  }

  function take(files) { for (var i = 0; i < files.length; i++) send(files[i]); }

  if (!token) { say("This page needs the link you were given (it ends with #drk_…).", "error"); return; }
  fetch(api + "/v1/me", { headers: { Authorization: "Bearer " + token } })
    .then(function (res) { return res.json().then(function (body) { return { ok: res.ok, body: body }; }); })
    .then(function (answer) {
      if (!answer.ok || !answer.body.event_id) {
        say("This link does not work: " + (answer.body.detail || answer.body.title || "unknown link") + ".", "error");
        return;
      }
      eventId = answer.body.event_id;
      say("Choose or drop your photos and videos. You can close the page and come back: uploads resume.");
      drop.hidden = false;
    })
    .catch(function (err) { say("The server cannot be reached (" + err + ").", "error"); });

  drop.addEventListener("click", function () { picker.click(); });
  picker.addEventListener("change", function () { take(picker.files); picker.value = ""; });
  drop.addEventListener("dragover", function (e) { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", function () { drop.classList.remove("over"); });
  drop.addEventListener("drop", function (e) { e.preventDefault(); drop.classList.remove("over"); take(e.dataTransfer.files); });
})();
