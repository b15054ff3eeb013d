// Loket balie: focus after submit, remembered initiative, live status. Plain JS, no build.
(function () {
  "use strict";
  var KEY = "loket.initiative";

  // Focus: the error summary (or the result heading) after a submit.
  var target = document.querySelector("[data-focus]");
  if (target) { target.focus(); }

  // Error summary links: move focus to the field itself, not only scroll to it.
  document.querySelectorAll(".foutsamenvatting a[href^='#']").forEach(function (a) {
    a.addEventListener("click", function (ev) {
      var field = document.getElementById(a.getAttribute("href").slice(1));
      if (field) { ev.preventDefault(); field.focus(); field.scrollIntoView({block: "center"}); }
    });
  });

  // Remember the chosen initiative on this computer (the server also sets a cookie).
  var select = document.getElementById("initiative");
  if (select) {
    try {
      var saved = window.localStorage.getItem(KEY);
      if (saved && !select.value) { select.value = saved; }
      select.addEventListener("change", function () {
        window.localStorage.setItem(KEY, select.value);
      });
    } catch (e) { /* storage unavailable: the cookie still works */ }
  }

  // Avoid double submits: the form_id makes them harmless, this makes them rare.
  var form = document.getElementById("vraagformulier");
  if (form) {
    form.addEventListener("submit", function () {
      var button = document.getElementById("versturen");
      if (button) { button.setAttribute("aria-disabled", "true"); button.textContent = "Bezig met versturen..."; }
    });
  }

  // Live status panel: poll intake, which asks the handoff service.
  var panel = document.getElementById("status");
  if (panel && panel.dataset.poll) {
    var last = "";
    var poll = function () {
      fetch(panel.dataset.poll, {headers: {"Accept": "application/json"}})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) {
          if (!data) { return; }
          var text = data.label || "Ontvangen";
          if (data.details && data.details.length) { text += " - " + data.details.join("; "); }
          if (text !== last) { panel.textContent = text; last = text; }
        })
        .catch(function () { /* keep the last known status */ });
    };
    poll();
    window.setInterval(poll, 3000);
  }
})();
