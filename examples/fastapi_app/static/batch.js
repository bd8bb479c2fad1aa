// A batch's page: every card follows its product live (Server-Sent Events, or polling
// every 2 seconds when the stream is not available), and "Retry N Failed" at the end.
(function () {
  "use strict";
  var status = JSON.parse(document.getElementById("initial-status").textContent);
  var batchId = status.batch_id;
  var live = document.getElementById("live");
  var retry = document.getElementById("retry");
  var polling = null;
  var stream = null;

  function setText(node, text) { if (node.textContent !== text) { node.textContent = text; } }

  function render(s) {
    status = s;
    var overall = document.getElementById("overall-state");
    setText(overall, s.state);
    overall.className = "badge big " + s.state;
    var parts = [];
    Object.keys(s.counts).forEach(function (k) { if (s.counts[k]) { parts.push(s.counts[k] + " " + k); } });
    setText(document.getElementById("counts"), parts.join(" · "));
    setText(document.getElementById("total"), String(s.total));
    document.getElementById("overall-progress").style.width = Math.round(100 * s.progress) + "%";
    s.products.forEach(function (p) {
      var card = document.querySelector('.item[data-product-id="' + CSS.escape(p.product_id) + '"]');
      if (!card) { return; }
      card.dataset.state = p.state;
      var badge = card.querySelector(".badge");
      setText(badge, p.state);
      badge.className = "badge " + p.state;
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
        img.alt = "video of " + p.title;
        img.src = p.result_url;
        media.appendChild(img);
      }
    });
    var failed = s.counts.failed || 0;
    retry.hidden = !(s.is_terminal && failed > 0);
    setText(retry, "Retry " + failed + " Failed");
    if (s.is_terminal) { stop(); setText(live, "finished"); }
  }

  function stop() {
    if (stream) { stream.close(); stream = null; }
    if (polling) { clearInterval(polling); polling = null; }
  }

  function poll() {
    fetch("/api/v1/products/batch/" + encodeURIComponent(batchId) + "/status", {cache: "no-store"})
      .then(function (answer) { if (answer.ok) { return answer.json(); } throw new Error(answer.status); })
      .then(render)
      .catch(function () { setText(live, "reconnecting…"); });
  }

  function startPolling() {
    if (polling || status.is_terminal) { return; }
    setText(live, "updating every 2 s");
    poll();
    polling = setInterval(poll, 2000);
  }

  function listen() {
    if (status.is_terminal) { setText(live, "finished"); return; }
    if (!window.EventSource) { startPolling(); return; }
    stream = new EventSource("/api/v1/products/batch/" + encodeURIComponent(batchId) + "/events");
    stream.addEventListener("open", function () { setText(live, "live"); });
    stream.addEventListener("status", function (event) { render(JSON.parse(event.data)); });
    stream.addEventListener("end", function () { stop(); });
    stream.addEventListener("error", function () {
      // The server went away (a restart) or a proxy cut the stream: poll instead.
      if (stream) { stream.close(); stream = null; }
      startPolling();
    });
  }

  retry.addEventListener("click", function () {
    retry.disabled = true;
    fetch("/api/v1/products/batch/" + encodeURIComponent(batchId) + "/retry-failed", {method: "POST"})
      .then(function (answer) {
        return answer.json().then(function (data) { return {ok: answer.ok, data: data}; });
      })
      .then(function (result) {
        if (!result.ok) { throw new Error(result.data.detail || "the retry could not be started"); }
        window.location.assign("/batch-generate?batch_id=" + encodeURIComponent(result.data.batch_id));
      })
      .catch(function (error) {
        setText(document.getElementById("retry-error"), error.message);
        retry.disabled = false;
      });
  });

  render(status);
  listen();
})();
