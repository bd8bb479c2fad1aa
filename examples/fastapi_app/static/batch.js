// A batch's page: every card follows its product live (Server-Sent Events), "Cancel
// batch" while it runs and "Retry N Failed" once it has ended.
//
// When the stream breaks (a server restart, a proxy that cuts long requests, the network)
// the page polls /status every 2 seconds and tries the stream again, waiting longer after
// each failed try (up to 30 s), and at once when a poll finds the server back after it
// could not be reached; it says which of these it is doing, in words. A poll that answers
// after the stream is live again is dropped: the stream is newer.
(function () {
  "use strict";
  var status = JSON.parse(document.getElementById("initial-status").textContent);
  var labels = JSON.parse(document.getElementById("labels").textContent);
  var batchId = status.batch_id;
  var base = "/api/v1/products/batch/" + encodeURIComponent(batchId);
  var live = document.getElementById("live");
  var retry = document.getElementById("retry");
  var cancel = document.getElementById("cancel");
  var problem = document.getElementById("action-error");
  var OFFLINE = "Cannot reach the studio: check your connection. Trying again…";
  var polling = null;
  var stream = null;
  var reopen = null;
  var failures = 0;
  var streamOpen = false;   // the stream is open and delivering
  var unreachable = false;  // the last poll did not reach the server

  function streamLive() { return stream !== null && streamOpen; }

  function setText(node, text) { if (node.textContent !== text) { node.textContent = text; } }

  function itemState(p) { return p.state === "running" && p.stalled ? "waiting" : p.state; }

  function countsLine(s) {
    var counts = Object.assign({}, s.counts);
    counts.running = (counts.running || 0) - (s.stalled || 0);
    counts.waiting = s.stalled || 0;
    var parts = [];
    Object.keys(labels.counts).forEach(function (k) {
      if (counts[k]) { parts.push(counts[k] + " " + labels.counts[k]); }
    });
    return (parts.join(" · ") || "nothing yet") + " of " + s.total;
  }

  function render(s) {
    status = s;
    var overall = document.getElementById("overall-state");
    setText(overall, labels.batches[s.state] || s.state);
    overall.className = "badge big " + s.state;
    overall.dataset.state = s.state;
    setText(document.getElementById("counts"), countsLine(s));
    var percent = Math.round(100 * s.progress);
    document.getElementById("overall-progress").style.width = percent + "%";
    document.querySelector(".progress.overall").setAttribute("aria-valuenow", String(percent));
    s.products.forEach(function (p) {
      var card = document.querySelector('.item[data-product-id="' + CSS.escape(p.product_id) + '"]');
      if (!card) { return; }
      var state = itemState(p);
      card.dataset.state = state;
      var badge = card.querySelector(".badge");
      setText(badge, labels.items[state] || state);
      badge.className = "badge " + state;
      var percent = Math.round(100 * p.progress);
      var bar = card.querySelector(".progress");
      bar.setAttribute("aria-valuenow", String(percent));
      bar.firstElementChild.style.width = percent + "%";
      setText(card.querySelector(".message"), p.message || "");
      var error = card.querySelector(".error");
      setText(error, p.error || "");
      error.hidden = !p.error;
      var media = card.querySelector(".media");
      if (p.result_url && !media.querySelector("img")) {
        var img = document.createElement("img");
        img.className = "video";
        img.alt = "Video of " + p.title;
        img.src = p.result_url;
        media.appendChild(img);
      }
    });
    var failed = s.counts.failed || 0;
    retry.hidden = !(s.is_terminal && failed > 0);
    setText(retry, "Retry " + failed + " Failed");
    cancel.hidden = s.is_terminal || s.cancel_requested;
    if (s.is_terminal) { stop(); setText(live, "Finished."); }
  }

  function stop() {
    if (stream) { stream.close(); stream = null; streamOpen = false; }
    if (polling) { clearInterval(polling); polling = null; }
    if (reopen) { clearTimeout(reopen); reopen = null; }
  }

  // What the page says when /status answers with an error instead of the batch.
  function refused(code) {
    if (code === 404) { gone(); return null; }
    if (code === 401) { stop(); setText(live, "Your sign-in has ended: sign in again to follow this batch."); return null; }
    setText(live, "The studio could not read the batch (error " + code + "); trying again…");
    return null;
  }

  function gone() {
    stop();
    cancel.hidden = true;
    setText(live, "This batch no longer exists.");
  }

  function poll() {
    var cameBack = false;
    fetch(base + "/status", {cache: "no-store"})
      .then(
        function (answer) {
          if (streamLive()) { return null; }
          cameBack = unreachable;
          unreachable = false;
          return answer.ok ? answer.json() : refused(answer.status);
        },
        function () {
          if (streamLive()) { return null; }
          unreachable = true;
          setText(live, OFFLINE);
          return null;
        }
      )
      .then(function (s) {
        if (!s || streamLive()) { return; }
        render(s);
        if (!s.is_terminal) {
          setText(live, "Updating every 2 s; reconnecting to live updates…");
          // The server answers (again): back to the live stream, now.
          if (!stream && reopen && (failures === 1 || cameBack)) {
            clearTimeout(reopen);
            reopen = null;
            listen();
          }
        }
      });
  }

  function startPolling() {
    if (polling || status.is_terminal) { return; }
    poll();
    polling = setInterval(poll, 2000);
  }

  function listen() {
    if (status.is_terminal) { setText(live, "Finished."); return; }
    if (!window.EventSource) { startPolling(); return; }
    var opened = false;
    streamOpen = false;
    stream = new EventSource(base + "/events");
    stream.addEventListener("open", function () {
      opened = true;
      streamOpen = true;
      failures = 0;
      if (polling) { clearInterval(polling); polling = null; }
      setText(live, "Live.");
    });
    stream.addEventListener("status", function (event) { render(JSON.parse(event.data)); });
    stream.addEventListener("end", function () { stop(); });
    stream.addEventListener("gone", gone);
    stream.addEventListener("error", function () {
      // The server went away (a restart, a deploy) or something cut the stream: poll
      // meanwhile, and open a new stream later (at once if a poll gets an answer first).
      if (stream) { stream.close(); stream = null; streamOpen = false; }
      failures = opened ? 1 : failures + 1;
      setText(live, unreachable ? OFFLINE : "Connection lost; reconnecting…");
      startPolling();
      var wait = Math.min(30000, 1000 * Math.pow(2, failures - 1));
      if (reopen) { clearTimeout(reopen); }
      reopen = setTimeout(function () { reopen = null; listen(); }, wait);
    });
  }

  // A fetch that fails without an answer (the server is down, the network is gone) says
  // so in words; an answer that is an error says what the server said.
  function post(path) {
    return fetch(base + path, {method: "POST"}).then(
      function (answer) {
        return answer.json().catch(function () { return {}; }).then(function (data) {
          if (!answer.ok) {
            throw new Error(typeof data.detail === "string" ? data.detail : "The studio refused (" + answer.status + ").");
          }
          return data;
        });
      },
      function () { throw new Error("Cannot reach the studio: check your connection and try again."); }
    );
  }

  retry.addEventListener("click", function () {
    retry.disabled = true;
    setText(problem, "");
    post("/retry-failed")
      .then(function (data) {
        window.location.assign("/batch-generate?batch_id=" + encodeURIComponent(data.batch_id));
      })
      .catch(function (error) { setText(problem, error.message); retry.disabled = false; });
  });

  cancel.addEventListener("click", function () {
    cancel.disabled = true;
    setText(problem, "");
    setText(cancel, "Cancelling…");
    post("/cancel")
      .then(function () { cancel.hidden = true; poll(); })
      .catch(function (error) {
        setText(problem, error.message);
        setText(cancel, "Cancel batch");
        cancel.disabled = false;
      });
  });

  render(status);
  listen();
})();
