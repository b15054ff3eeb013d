/* Loket operator view: refresh the server-rendered overview fragment every few seconds.
   No framework: fetch the fragment, swap it in, keep keyboard focus, announce changed key
   figures through the polite live region. The pause button stops and resumes. */
(function () {
  "use strict";

  var summary = document.getElementById("foutsamenvatting");
  if (summary) { summary.focus(); }

  var region = document.getElementById("overzicht");
  if (!region || !window.fetch || !window.DOMParser) { return; }
  var url = region.getAttribute("data-fragment");
  var seconds = parseInt(region.getAttribute("data-interval"), 10) || 5;
  var button = document.getElementById("verversen-pauze");
  var status = document.getElementById("verversen-status");
  var live = document.getElementById("kerncijfers-live");
  var paused = false;
  var timer = null;
  var busy = false;
  var lastHtml = null;

  function say(text) { if (status) { status.textContent = text; } }

  function schedule() {
    window.clearTimeout(timer);
    if (!paused) { timer = window.setTimeout(refresh, seconds * 1000); }
  }

  function swap(html) {
    if (html === lastHtml) { return; }
    lastHtml = html;
    var doc = new DOMParser().parseFromString(html, "text/html");
    var fresh = doc.getElementById("overzicht-inhoud");
    var current = document.getElementById("overzicht-inhoud");
    if (!fresh || !current) { return; }
    var active = document.activeElement;
    var focusId = active && region.contains(active) ? active.id : null;
    var fresh2 = document.importNode(fresh, true);
    current.parentNode.replaceChild(fresh2, current);
    if (focusId) {
      var again = document.getElementById(focusId);
      if (again) { again.focus({ preventScroll: true }); }
    }
    var text = fresh2.getAttribute("data-samenvatting");
    if (live && text && live.textContent !== text) { live.textContent = text; }
  }

  function refresh() {
    if (busy || paused) { return; }
    busy = true;
    window.fetch(url, { credentials: "same-origin", cache: "no-store", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (response.status === 401) { throw new Error("login"); }
        if (!response.ok) { throw new Error("http " + response.status); }
        return response.text();
      })
      .then(function (html) {
        swap(html);
        say("Ververst elke " + seconds + " seconden.");
      })
      .catch(function (error) {
        if (error && error.message === "login") {
          say("Uw sessie is verlopen. Laad de pagina opnieuw om in te loggen.");
          paused = true;
          return;
        }
        say("Verversen mislukt; nieuwe poging over " + seconds + " seconden.");
      })
      .then(function () { busy = false; schedule(); });
  }

  if (button) {
    button.addEventListener("click", function () {
      paused = !paused;
      button.setAttribute("data-gepauzeerd", paused ? "ja" : "nee");
      button.textContent = paused ? "Verversen hervatten" : "Verversen pauzeren";
      say(paused ? "Verversen gepauzeerd." : "Ververst elke " + seconds + " seconden.");
      if (paused) { window.clearTimeout(timer); } else { refresh(); }
    });
  }
  region.setAttribute("data-live", "1");
  schedule();
}());
