// batchkit dashboard: a batch's page follows the batch live (server-sent events), and
// the actions that cannot be undone ask first. The pages read the same without it.
"use strict";

(function () {
  function confirmForms() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) {
          event.preventDefault();
        }
      });
    });
  }

  function follow(url) {
    var summary = document.querySelector(".summary");
    if (!summary || !window.EventSource) {
      return;
    }
    var source = new EventSource(url);
    var last = null;
    var reloading = null;
    summary.classList.add("live");

    function refreshItems() {
      // The items table of the page as it is now (same filter, same page), swapped in.
      reloading = null;
      fetch(window.location.href, { credentials: "same-origin" })
        .then(function (reply) { return reply.ok ? reply.text() : null; })
        .then(function (text) {
          if (!text) { return; }
          var fresh = new DOMParser().parseFromString(text, "text/html");
          var items = fresh.getElementById("items");
          var mine = document.getElementById("items");
          if (items && mine) {
            // What the reader opened stays open.
            var open = {};
            mine.querySelectorAll("tr[data-key]").forEach(function (row) {
              row.querySelectorAll("details").forEach(function (d, i) {
                if (d.open) { open[row.getAttribute("data-key") + "/" + i] = true; }
              });
            });
            items.querySelectorAll("tr[data-key]").forEach(function (row) {
              row.querySelectorAll("details").forEach(function (d, i) {
                if (open[row.getAttribute("data-key") + "/" + i]) { d.open = true; }
              });
            });
            mine.replaceWith(items);
          }
          var facts = fresh.querySelector(".summary dl");
          var shown = document.querySelector(".summary dl");
          if (facts && shown) { shown.replaceWith(facts); }
          var actions = fresh.querySelector(".actions");
          var current = document.querySelector(".actions");
          if (actions && current) { current.replaceWith(actions); confirmForms(); }
        })
        .catch(function () {});
    }

    source.addEventListener("status", function (event) {
      var status = JSON.parse(event.data);
      var state = summary.querySelector("[data-state]");
      state.textContent = status.state;
      state.className = "state " + status.state;
      summary.querySelector("[data-progress]").value = status.progress;
      summary.querySelector("[data-percent]").textContent = status.progress + "%";
      Object.keys(status.counts).forEach(function (name) {
        var cell = summary.querySelector('[data-count="' + name + '"]');
        if (cell) { cell.textContent = status.counts[name]; }
      });
      if (last !== null && last !== event.data && reloading === null) {
        reloading = window.setTimeout(refreshItems, 500);
      }
      last = event.data;
      if (status.is_terminal) {
        source.close();
        summary.classList.remove("live");
        if (reloading === null) { reloading = window.setTimeout(refreshItems, 100); }
      }
    });
    source.addEventListener("gone", function () {
      source.close();
      summary.classList.remove("live");
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    confirmForms();
    var url = document.body.getAttribute("data-events");
    if (url) { follow(url); }
  });
})();
