// The catalog page: a selection kept across pages, the sticky bar, and "Generate".
(function () {
  "use strict";
  var KEY = "studio:selected";
  var selected = new Set(JSON.parse(sessionStorage.getItem(KEY) || "[]"));
  var bar = document.getElementById("selection-bar");
  var count = document.getElementById("selection-count");
  var generate = document.getElementById("generate");
  var problem = document.getElementById("selection-error");
  var boxes = Array.prototype.slice.call(document.querySelectorAll("input.select"));

  function save() { sessionStorage.setItem(KEY, JSON.stringify(Array.from(selected))); }

  function render() {
    boxes.forEach(function (box) {
      box.checked = selected.has(box.value);
      box.closest(".card").classList.toggle("selected", box.checked);
    });
    var n = selected.size;
    bar.hidden = n === 0;
    count.textContent = n + " selected";
    generate.textContent = "Generate " + n + (n === 1 ? " Video" : " Videos");
  }

  boxes.forEach(function (box) {
    box.addEventListener("change", function () {
      if (box.checked) { selected.add(box.value); } else { selected.delete(box.value); }
      save(); render();
    });
  });
  document.getElementById("select-page").addEventListener("click", function () {
    boxes.forEach(function (box) { selected.add(box.value); });
    save(); render();
  });
  document.getElementById("clear").addEventListener("click", function () {
    selected.clear(); save(); render();
  });

  generate.addEventListener("click", function () {
    var ids = Array.from(selected);
    if (!ids.length) { return; }
    generate.disabled = true;
    problem.textContent = "";
    // One token per click: a retried request makes one batch, not two.
    var token = (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random());
    fetch("/api/v1/products/batch-generate", {
      method: "POST",
      headers: {"content-type": "application/json"},
      body: JSON.stringify({product_ids: ids, request_id: token})
    }).then(function (answer) {
      return answer.json().catch(function () { return {}; })
        .then(function (data) { return {ok: answer.ok, data: data}; });
    }, function () {
      // No answer at all: the server is down or the network is gone.
      throw new Error("Cannot reach the studio: check your connection and try again.");
    }).then(function (result) {
      if (!result.ok) { throw new Error(describe(result.data)); }
      selected.clear(); save();
      window.location.assign("/batch-generate?batch_id=" + encodeURIComponent(result.data.batch_id));
    }).catch(function (error) {
      problem.textContent = error.message;
      generate.disabled = false;
    });
  });

  function describe(data) {
    if (data && typeof data.detail === "string") { return data.detail; }
    if (data && Array.isArray(data.detail)) {
      return data.detail.map(function (d) { return d.msg; }).join("; ");
    }
    return "the batch could not be submitted";
  }

  render();
})();
