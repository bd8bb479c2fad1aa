// The batch page, live: poll the batch's JSON every second and update the table until
// the batch is terminal, then reload once for the server's final page (results, the
// "Retry failed" button). Without JavaScript the page shows the state at load.
"use strict";

(function () {
  const summary = document.getElementById("summary");
  if (!summary || summary.dataset.terminal === "true") {
    return;
  }
  const api = summary.dataset.api;

  function show(batch) {
    const state = document.getElementById("batch-state");
    state.textContent = batch.state;
    state.className = "state-" + batch.state;
    document.getElementById("batch-progress").value = batch.progress;
    for (const item of batch.items) {
      const row = document.querySelector(`tr[data-key="${CSS.escape(item.key)}"]`);
      if (!row) {
        continue;
      }
      const cell = row.querySelector(".state");
      cell.textContent = item.state;
      cell.className = "state state-" + item.state;
      row.querySelector("progress").value = item.progress;
      const active = item.state === "queued" || item.state === "running";
      row.querySelector(".message").textContent = active ? item.message || "" : "";
      const outcome = row.querySelector(".outcome");
      if (item.error) {
        outcome.textContent = `${item.error.type}: ${item.error.message}`;
        outcome.classList.add("error");
      } else if (item.result && item.result.video) {
        outcome.textContent = item.result.video;
      }
    }
  }

  async function poll() {
    try {
      const response = await fetch(api, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const batch = await response.json();
        show(batch);
        if (batch.is_terminal) {
          window.location.reload();
          return;
        }
      }
    } catch (error) {
      // The server is restarting, or the network is down: try again at the next tick.
    }
    window.setTimeout(poll, 1000);
  }

  window.setTimeout(poll, 1000);
})();
